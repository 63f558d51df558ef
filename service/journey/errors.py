"""journey's errors: one root, :class:`JourneyError`, and a subclass per concern.

An error a user can cause or fix is a JourneyError whose message says what went wrong, with which
input, and what to do, so the ``journey`` command prints it without a traceback; anything else
keeps its traceback. This module imports nothing, so every layer may use it. Details: docs/errors.md.
"""

from __future__ import annotations


class JourneyError(Exception):
    """An error with a message for people: the CLI prints the message without a traceback.

    Anything that is not a JourneyError keeps its traceback.
    """


class SettingsError(JourneyError, ValueError):
    """A setting (a ``JOURNEY_*`` variable, or an option standing in for one) holds a value that
    cannot be used. Also importable from journey.settings."""


class UsageError(JourneyError, ValueError):
    """A command-line argument cannot be used (a date that is not a date, a speed <= 0, ...)."""


class DefinitionError(JourneyError, ValueError):
    """The journey definition file (journey.yaml) cannot be used. Also importable from
    journey.core.definition."""


class InputError(JourneyError, ValueError):
    """An input (a file to replay, fit or score; a touchpoint) is malformed or unusable."""


class InputNotFound(InputError, FileNotFoundError):
    """An input file or directory does not exist."""


class EncodingError(JourneyError, ValueError):
    """Stored or exchanged data (a customer state, an aggregate snapshot) is in a form this
    build cannot read: usually a different journey version wrote it."""


class CorruptState(EncodingError):
    """A stored customer state that no journey version wrote (damaged, or written by something
    else): the record that needs it is dead-lettered, the state is left as it is."""


class NewerEncoding(EncodingError):
    """The data was written by a newer journey than this one (a rolling upgrade's mix of
    versions): not bad input, so the worker exits without committing instead of dead-lettering
    it, and whoever owns the partition next (a new worker) reads it again."""


class ChurnError(JourneyError, ValueError):
    """The churn model cannot be used: its params file, its calibration, or their fit."""


class BrokerError(JourneyError, RuntimeError):
    """Kafka could not be reached, started (the embedded broker) or refused a request (topic
    creation, a highwater read, a replay's records). Also importable from journey.kafka.broker."""


class WorkerError(JourneyError, RuntimeError):
    """The worker could not be set up (e.g. its store or its recovery hook)."""


class SidecarError(JourneyError, RuntimeError):
    """The sidecar could not answer (e.g. no worker answered a customer lookup)."""
