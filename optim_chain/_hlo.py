"""Reading the structure of a compiled XLA program from its optimized HLO text.

Used by the benchmark and by the tests that compare compiled steps: how many fused loops a
program runs, how many of them loop over arrays (rather than compute a few scalars), and how
many bytes per element those array loops move between memory and the cores.
"""

from __future__ import annotations

import dataclasses
import math
import re

_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?(%?[\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")


@dataclasses.dataclass(frozen=True)
class Loop:
    """One fusion of the compiled program."""

    name: str
    computation: str
    elements: int  # elements of its largest output array
    bytes_read: int  # bytes of its array operands
    bytes_written: int  # bytes of its outputs

    @property
    def over_arrays(self) -> bool:
        """Whether it loops over arrays (as opposed to computing scalars only)."""
        return self.elements > 1


def _arrays(type_text: str) -> list[tuple[int, int]]:
    """``(elements, bytes)`` of every array type named in ``type_text``."""
    found = []
    for dtype, dims in _ARRAY.findall(type_text):
        elements = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        found.append((elements, elements * _DTYPE_BYTES.get(dtype, 4)))
    return found


def _operand_names(call_text: str) -> list[str]:
    """The ``%names`` passed to an instruction, from the text after its opening parenthesis."""
    depth = 1
    for index, char in enumerate(call_text):
        depth += char == "("
        depth -= char == ")"
        if depth == 0:
            return re.findall(r"%[\w.\-]+", call_text[:index])
    return re.findall(r"%[\w.\-]+", call_text)


def loops(hlo_text: str) -> list[Loop]:
    """Every fusion in the optimized HLO text ``hlo_text`` (``compiled.as_text()``).

    Fusions inside while-loop bodies count once each, as they appear in the program.
    """
    found: list[Loop] = []
    types: dict[tuple[str, str], str] = {}
    computation = ""
    pending: list[tuple[str, str, str, list[str]]] = []
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            computation = "ENTRY" if line.startswith("ENTRY") else line.split("(")[0].split()[-1]
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, type_text, opcode, rest = match.groups()
        types[(computation, name)] = type_text
        if opcode == "fusion":
            pending.append((computation, name, type_text, _operand_names(rest)))
    for computation, name, type_text, operands in pending:
        outputs = _arrays(type_text)
        read = 0
        for operand in operands:
            arrays = _arrays(types.get((computation, operand), ""))
            read += sum(b for e, b in arrays if e > 1)
        found.append(
            Loop(
                name=name,
                computation=computation,
                elements=max((e for e, _ in outputs), default=0),
                bytes_read=read,
                bytes_written=sum(b for _, b in outputs),
            )
        )
    return found


@dataclasses.dataclass(frozen=True)
class Structure:
    """Counts that summarize a compiled program."""

    fusions: int  # every fusion
    array_loops: int  # fusions that loop over arrays
    while_loops: int  # while loops (update_and_apply's slice loops)
    bytes_per_element: float  # bytes the array loops outside while loops move, per element


def structure(hlo_text: str, elements: int | None = None) -> Structure:
    """Summarizes ``hlo_text``; ``elements`` (the number of parameters) scales the byte count.

    ``bytes_per_element`` adds the array operands and outputs of every array loop in the
    entry computation and divides by ``elements`` (default: the largest loop's size). It is
    what those loops move if nothing stays in cache between them; loops inside while bodies
    are left out, since their slices are meant to stay in cache.
    """
    all_loops = loops(hlo_text)
    entry = [lp for lp in all_loops if lp.computation == "ENTRY"]
    array_entry = [lp for lp in entry if lp.over_arrays]
    count = elements or max((lp.elements for lp in array_entry), default=1)
    moved = sum(lp.bytes_read + lp.bytes_written for lp in array_entry)
    return Structure(
        fusions=len(all_loops),
        array_loops=sum(lp.over_arrays for lp in all_loops),
        while_loops=len(re.findall(r"\bwhile\(", hlo_text)),
        bytes_per_element=moved / max(count, 1),
    )
