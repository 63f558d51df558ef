"""The adaptive batch size: grows under a backlog while batches are quick, shrinks when slow."""

from journey.worker.batchsize import LEAST_RECORDS, BatchSizer


def test_starts_small_and_grows_to_the_most_while_batches_are_quick() -> None:
    sizer = BatchSizer(10_000, target_s=0.5)
    assert sizer.limit == LEAST_RECORDS
    for _ in range(20):
        sizer.observe(sizer.limit, busy_s=sizer.limit * 20e-6)  # 20 us a record: 25,000 fit in 0.5 s
    assert sizer.limit == 10_000


def test_settles_near_the_records_that_fit_the_target() -> None:
    sizer = BatchSizer(100_000, target_s=0.5)
    for _ in range(30):
        sizer.observe(sizer.limit, busy_s=sizer.limit * 100e-6)  # 5,000 fit
    assert 4_900 <= sizer.limit <= 5_000


def test_a_slow_batch_shrinks_the_next_but_not_below_the_least() -> None:
    sizer = BatchSizer(10_000, target_s=0.5)
    sizer.limit = 10_000
    sizer.observe(10_000, busy_s=2.0)  # 2,500 fit: halfway there
    assert sizer.limit == 6_250
    for _ in range(30):
        sizer.observe(sizer.limit, busy_s=60.0)
    assert sizer.limit == LEAST_RECORDS


def test_a_short_batch_moves_the_limit_only_when_it_overran_the_target() -> None:
    sizer = BatchSizer(10_000, target_s=0.5)
    sizer.limit = 4_000
    sizer.observe(10, busy_s=1e-4)  # caught up: small, quick batches say nothing about big ones
    assert sizer.limit == 4_000
    for _ in range(10):
        sizer.observe(5, busy_s=0.003)  # nor do a few records with the batch's fixed costs
    assert sizer.limit == 4_000
    sizer.observe(1_000, busy_s=1.0)  # but a short batch that took 1 s is evidence enough
    assert sizer.limit == 2_250


def test_the_most_is_a_hard_cap_even_below_the_least() -> None:
    sizer = BatchSizer(100, target_s=0.5)
    assert sizer.limit == 100
    sizer.observe(100, busy_s=1e-6)
    assert sizer.limit == 100
