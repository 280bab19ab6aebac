"""Whether a candidate version can take the live version's requests: the same tensor contract.

Clients of a model send the live version's inputs and read its outputs. A candidate is compatible
when it takes exactly those inputs (names, datatypes, shapes) and returns at least those outputs:

- the same input names: a missing one would be refused in every request, an extra one is never sent;
- the same datatype for each input and for each output clients read;
- shapes of the same rank whose dimensions agree, a dynamic dimension (-1) on either side agreeing
  with anything ([-1, 16] and [1, 16] agree; [-1, 32] and [-1, 16] do not);
- extra outputs are fine (nobody reads them yet).

`stage` refuses an incompatible candidate unless forced (409 naming each difference).
"""

from __future__ import annotations

from collections.abc import Sequence

from modelserve.serving.tensors import TensorSpec


def incompatibilities(
    live_inputs: Sequence[TensorSpec],
    live_outputs: Sequence[TensorSpec],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> list[str]:
    """Each way the candidate (`inputs`, `outputs`) differs from the live contract; [] when compatible."""
    problems: list[str] = []
    theirs = {spec.name: spec for spec in inputs}
    for spec in live_inputs:
        found = theirs.pop(spec.name, None)
        if found is None:
            problems.append(f"input {spec.name!r} is missing")
        else:
            problems.extend(_differences("input", spec, found))
    problems.extend(f"input {name!r} is new (clients do not send it)" for name in sorted(theirs))
    produced = {spec.name: spec for spec in outputs}
    for spec in live_outputs:
        found = produced.get(spec.name)
        if found is None:
            problems.append(f"output {spec.name!r} is missing")
        else:
            problems.extend(_differences("output", spec, found))
    return problems


def _differences(kind: str, live: TensorSpec, candidate: TensorSpec) -> list[str]:
    problems = []
    if live.datatype != candidate.datatype:
        problems.append(f"{kind} {live.name!r} is {candidate.datatype}, live takes {live.datatype}")
    if not shapes_agree(live.shape, candidate.shape):
        problems.append(
            f"{kind} {live.name!r} has shape {list(candidate.shape)}, live has {list(live.shape)}"
        )
    return problems


def shapes_agree(a: Sequence[int], b: Sequence[int]) -> bool:
    """Same rank, and every dimension equal or dynamic (-1) on either side."""
    return len(a) == len(b) and all(x == y or x < 0 or y < 0 for x, y in zip(a, b, strict=True))
