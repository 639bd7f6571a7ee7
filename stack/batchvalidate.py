"""Validate a batch of JSON messages against a contract model, columnar and fast.

Per-message pydantic validation costs ~10 µs a message in the lander once the Kafka client
is fast; this validates a whole poll batch with Arrow's JSON reader (C++) and vectorised
checks, and hands only the doubtful messages to the pydantic model, which stays the one
definition of the contract and the one source of rejection reasons:

1. empty messages go straight to pydantic, multi-line ones are isolated like bad lines;
2. the rest are read as newline-delimited JSON with an Arrow schema *derived from the
   model* (types are as strict as pydantic's: a string where a number belongs fails);
   a failing read is split (at the row Arrow names, else in halves) until the bad
   messages are isolated, and those go to pydantic;
3. vectorised checks re-state what the Arrow types cannot (required fields present,
   literals, UUID and timestamp syntax, finite numbers, id patterns and lengths, number
   bounds, the contract's time range); rows failing them go to pydantic, which either
   accepts them (a rarer spelling the fast path does not try to understand) or rejects
   them with its reason.

So the fast path only ever *accepts* messages pydantic accepts too; a parity test holds it
to that. Output rows keep the input order.

With :class:`~stack.contracts.EventTimeBounds`, rows whose ``ts`` lies outside the
configured window around the receiver's clock are rejected too (``time_out_of_bounds``):
the one check of the contract that needs a clock and the configuration.
"""

from __future__ import annotations

import logging
import operator
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, compress
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from pydantic import AfterValidator, AwareDatetime, BaseModel, ValidationError

from stack.contracts import TIME_MAX, TIME_MIN, EventTimeBounds, time_range_check, violation_reason
from stack.resilience import isolate

TS_TYPE = pa.timestamp("us", tz="UTC")
_UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# ISO 8601 as pydantic takes it, fields in range (year 1-9999; the day against its month
# is checked only when a cast fails, see ``_possible_times``).
_TS_RE = (
    r"^(000[1-9]|00[1-9]\d|0[1-9]\d{2}|[1-9]\d{3})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
log = logging.getLogger("vigil.validate")
_ROW_RE = re.compile(r"in row (\d+)")
_SLICE = 1024


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # "uuid" | "str" | "datetime" | "float" | "int" | "bool" | "literal_str" | …
    required: bool
    literals: tuple[Any, ...] = ()
    bounds: tuple[float | None, float | None] = (None, None)  # inclusive, from ge/le
    pattern: str | None = None  # strings: the regex they must match (anchored)
    max_length: int | None = None  # strings: characters at most
    time_range: bool = False  # datetimes: the contract's [TIME_MIN, TIME_MAX)


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    if get_origin(ann) in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return ann, False


def _unwrap_annotated(ann: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, FieldInfo(...), ...]`` → ``(T, constraints)``."""
    if get_origin(ann) is not Annotated:
        return ann, []
    base, *extras = get_args(ann)
    meta: list[Any] = []
    for extra in extras:
        meta.extend(getattr(extra, "metadata", [extra]))
    return base, meta


def _meta(meta: list[Any], attr: str) -> Any:
    return next((getattr(m, attr) for m in meta if getattr(m, attr, None) is not None), None)


def _describe(model: type[BaseModel]) -> list[_Field]:
    out = []
    for name, info in model.model_fields.items():
        ann, _optional = _unwrap_optional(info.annotation)
        ann, inner = _unwrap_annotated(ann)
        meta = [*info.metadata, *inner]
        required = info.is_required()
        bounds = (_meta(meta, "ge"), _meta(meta, "le"))
        if ann is UUID:
            out.append(_Field(name, "uuid", required))
        elif ann is str:
            pattern, longest = _meta(meta, "pattern"), _meta(meta, "max_length")
            out.append(_Field(name, "str", required, pattern=pattern, max_length=longest))
        elif ann is AwareDatetime or ann is datetime:
            ranged = any(isinstance(m, AfterValidator) and m.func is time_range_check for m in meta)
            out.append(_Field(name, "datetime", required, time_range=ranged))
        elif ann is float:
            out.append(_Field(name, "float", required, bounds=bounds))
        elif ann is bool:
            out.append(_Field(name, "bool", required))
        elif ann is int:
            out.append(_Field(name, "int", required, bounds=bounds))
        elif get_origin(ann) is Literal:
            lits = get_args(ann)
            if all(isinstance(v, str) for v in lits):
                out.append(_Field(name, "literal_str", required, lits))
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in lits):
                out.append(_Field(name, "literal_int", required, lits))
            else:
                raise TypeError(f"{model.__name__}.{name}: mixed literal types are not supported")
        else:
            raise TypeError(f"{model.__name__}.{name}: no Arrow mapping for {ann!r}")
    return out


_READ_TYPE = {
    "uuid": pa.string(),
    "str": pa.string(),
    "datetime": pa.string(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "int": pa.int64(),
    "literal_str": pa.string(),
    "literal_int": pa.int64(),
}
_OUT_TYPE = {**_READ_TYPE, "datetime": TS_TYPE, "literal_int": pa.int16()}


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of validated rows of ``model`` (UUIDs as text, times in UTC µs)."""
    return pa.schema([(f.name, _OUT_TYPE[f.kind]) for f in _describe(model)])


def _possible_times(col: pa.Array) -> pa.Array:
    """Which ISO-8601 strings (fields already in range) name a day their month has.

    February 30th parses as March 2nd, so a date that does not read back the same is not.
    """
    fmt = "%Y-%m-%dT%H:%M:%S"
    head = pc.utf8_slice_codeunits(col, 0, 19)  # YYYY-MM-DDTHH:MM:SS
    parsed = pc.strptime(head, format=fmt, unit="s", error_is_null=True)
    return pc.fill_null(pc.equal(pc.strftime(parsed, format=fmt), head), False)


def _matches(col: pa.Array, pattern: str) -> pa.Array:
    """Which strings match ``pattern``: each distinct value once (ids repeat across a
    poll, a patient's every reading carries theirs: 3x faster than every row)."""
    encoded = pc.dictionary_encode(col)
    return pc.take(pc.match_substring_regex(encoded.dictionary, pattern), encoded.indices)


@dataclass
class BatchResult:
    """Valid rows (``table``, ``_index`` = position in the input) and rejects.

    ``rejects`` holds ``(index, reason, detail)`` per rejected message.
    """

    table: pa.Table
    rejects: list[tuple[int, str, str]]
    slow_path: int = 0  # messages pydantic had to look at (bad or unusual spelling)


_US = 1_000_000
_TIME_MIN_US = int(TIME_MIN.timestamp()) * _US
_TIME_MAX_US = int(TIME_MAX.timestamp()) * _US


def _check(f: _Field, col: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Which values of one field the fast path accepts, and the column as output."""
    present = pc.is_valid(col)
    ok = present if f.required else pa.array([True] * len(col), pa.bool_())
    if f.kind == "uuid":
        ok = pc.and_(ok, pc.fill_null(pc.match_substring_regex(col, _UUID_RE), False))
        col = pc.utf8_lower(col)
    elif f.kind == "str":
        if f.pattern is not None:
            ok = pc.and_(ok, pc.fill_null(_matches(col, f.pattern), not f.required))
        elif f.max_length is not None:  # (a pattern bounds the length itself)
            short = pc.less_equal(pc.utf8_length(col), f.max_length)
            ok = pc.and_(ok, pc.fill_null(short, not f.required))
    elif f.kind == "datetime":
        ok = pc.and_(ok, pc.fill_null(pc.match_substring_regex(col, _TS_RE), False))
    elif f.kind in ("int", "float"):
        ok = pc.and_(ok, _in_bounds(f, col))
    elif f.kind in ("literal_str", "literal_int"):
        member = pc.is_in(col, value_set=pa.array(f.literals, type=_READ_TYPE[f.kind]))
        if not f.required:  # null → false above: absent is fine when optional
            member = pc.or_(member, pc.invert(present))
        ok = pc.and_(ok, member)
        if f.kind == "literal_int":
            col = pc.cast(col, pa.int16(), safe=False)
    return ok, col


def _in_bounds(f: _Field, col: pa.Array) -> pa.Array:
    """Numbers within the field's bounds (floats: finite too); absent values pass."""
    lo, hi = f.bounds
    if f.kind == "float" and hi is not None and lo == -hi:
        # Finite and within bounds in one kernel (NaN compares false).
        return pc.fill_null(pc.less_equal(pc.abs(col), hi), True)
    ok = (
        pc.fill_null(pc.is_finite(col), True)
        if f.kind == "float"
        else pa.array([True] * len(col), pa.bool_())
    )
    if lo is not None:
        ok = pc.and_(ok, pc.fill_null(pc.greater_equal(col, lo), True))
    if hi is not None:
        ok = pc.and_(ok, pc.fill_null(pc.less_equal(col, hi), True))
    return ok


def _cast_times(
    f: _Field, cols: dict[str, pa.Array], index: pa.Array
) -> tuple[dict[str, pa.Array], pa.Array, list[int]] | None:
    """Field ``f``'s text as UTC times: rows that name an impossible day (February 30th)
    or fall outside the contract's range are left to pydantic (their positions returned).
    None when a cast fails after the calendar check (pydantic takes the whole slice)."""
    left: list[int] = []
    try:
        cols[f.name] = pc.cast(cols[f.name], TS_TYPE)
    except pa.ArrowInvalid:
        fine = _possible_times(cols[f.name])
        left += pc.filter(index, pc.invert(fine)).to_pylist()
        cols = {k: pc.filter(v, fine) for k, v in cols.items()}
        index = pc.filter(index, fine)
        try:
            cols[f.name] = pc.cast(cols[f.name], TS_TYPE)
        except pa.ArrowInvalid:
            return None
    if f.time_range:  # outside the contract's range: pydantic names the reason
        us = pc.cast(cols[f.name], pa.int64())
        inside = pc.and_(pc.greater_equal(us, _TIME_MIN_US), pc.less(us, _TIME_MAX_US))
        inside = pc.fill_null(inside, not f.required)
        if not pc.all(inside).as_py():
            left += pc.filter(index, pc.invert(inside)).to_pylist()
            cols = {k: pc.filter(v, inside) for k, v in cols.items()}
            index = pc.filter(index, inside)
    return cols, index, left


class BatchValidator:
    """Validates lists of JSON messages against one contract model.

    Args:
        model: the contract.
        bounds: the configured event-time window (``ts``), checked against the clock at
            each :meth:`validate`; None checks only the contract's own range.
    """

    def __init__(self, model: type[BaseModel], bounds: EventTimeBounds | None = None) -> None:
        self.model = model
        self.bounds = bounds
        self.fields = _describe(model)
        self.out_schema = arrow_schema(model)
        self._read = pj.ParseOptions(
            explicit_schema=pa.schema([(f.name, _READ_TYPE[f.kind]) for f in self.fields]),
            unexpected_field_behavior="error",
        )
        self._with_index = self.out_schema.append(pa.field("_index", pa.int64()))

    # ------------------------------------------------------------------ public
    def warm_up(self) -> None:
        """Pay first-use costs now (pyarrow imports pandas on its first array: ~0.3 s).

        For a caller that is waiting on something else anyway, such as a process starting.
        """
        self._checks(self._read.explicit_schema.empty_table(), [])

    def validate(self, values: Sequence[bytes | None], now: datetime | None = None) -> BatchResult:
        """Valid rows and rejects of ``values``; ``now``: the clock for the configured
        event-time window (default: the wall clock)."""
        result = self._validate(values)
        if self.bounds is None or result.table.num_rows == 0:
            return result
        return self._bounded(result, now or datetime.now(UTC))

    def _bounded(self, result: BatchResult, now: datetime) -> BatchResult:
        """``result`` with rows outside the configured event-time window rejected."""
        assert self.bounds is not None
        table = result.table
        ts = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
        early, late = self.bounds.violations(ts, now)
        out = early | late
        if not out.any():
            return result
        index = table.column("_index").to_numpy()
        rejects = list(result.rejects)
        for i in np.flatnonzero(out).tolist():
            rejects.append((int(index[i]), "time_out_of_bounds", self.bounds.detail(early[i])))
        rejects.sort()
        return BatchResult(
            table=table.filter(pa.array(~out)), rejects=rejects, slow_path=result.slow_path
        )

    def _validate(self, values: Sequence[bytes | None]) -> BatchResult:
        # Arrow forgives things pydantic does not (a byte-order mark at the start of its
        # buffer), so only plain objects take the fast path; the odd rest goes to pydantic.
        # A message cut short in transit (no closing brace) is sure to fail the read: it
        # goes straight to pydantic instead of costing its slice a second read.
        plain = [v is not None and v[:1] == b"{" and v[-1:] == b"}" for v in values]
        fast = list(compress(range(len(values)), plain))
        slow = list(compress(range(len(values)), map(operator.not_, plain)))
        read: list[pa.Table] = []
        read_idx: list[list[int]] = []
        # Read in slices, so that a bad line costs a re-read of its slice, not the batch.
        todo = [(a, min(a + _SLICE, len(fast))) for a in range(0, len(fast), _SLICE)][::-1]
        while todo:  # a stack, popped in input order
            a, b = todo.pop()
            if a >= b:
                continue
            idx = fast[a:b]
            table, bad_row = self._read_lines(values, idx)
            if table is not None:
                read.append(table)
                read_idx.append(idx)
            elif b - a == 1:
                slow.append(idx[0])
            elif bad_row is not None:  # Arrow named the line: set it aside, read around it
                slow.append(idx[bad_row])
                todo += [(a + bad_row + 1, b), (a, a + bad_row)]
            else:
                mid = (a + b) // 2
                todo += [(mid, b), (a, mid)]
        tables = []
        if read:  # one pass of checks over everything read: fewer, larger kernel calls
            ok, doubtful = self._checks(pa.concat_tables(read), list(chain(*read_idx)))
            tables.append(ok)
            slow.extend(doubtful)
        if not slow:
            table = tables[0] if tables else self._with_index.empty_table()
            return BatchResult(table=table, rejects=[], slow_path=0)
        slow_table, rejects = self._slow(values, sorted(slow))
        tables.append(slow_table)
        table = pa.concat_tables(tables).sort_by("_index")
        return BatchResult(table=table, rejects=rejects, slow_path=len(slow))

    # ------------------------------------------------------------------ fast path
    def _read_lines(
        self, values: Sequence[bytes | None], idx: list[int]
    ) -> tuple[pa.Table | None, int | None]:
        """The lines as a table, or ``(None, row Arrow blamed, if it said and it is sane)``."""
        buf = b"\n".join([values[i] or b"" for i in idx])
        if buf.count(b"\n") != len(idx) - 1 or b"\r" in buf:
            return None, None  # a message spans lines (pretty-printed?): isolate it
        if not buf.isascii():  # ASCII is UTF-8; checking that is ~10x cheaper than decoding
            try:
                buf.decode("utf-8")  # Arrow does not check; pydantic does
            except UnicodeDecodeError as exc:
                return None, buf.count(b"\n", 0, exc.start)
        try:
            table = pj.read_json(
                pa.py_buffer(buf),
                read_options=pj.ReadOptions(use_threads=False, block_size=len(buf) + 1),
                parse_options=self._read,
            )
        except pa.ArrowInvalid as exc:
            m = _ROW_RE.search(str(exc))
            row = int(m.group(1)) if m else None
            return None, row if row is not None and 0 <= row < len(idx) else None
        # Two objects on one line would read as two rows: then trust nothing here.
        return (table, None) if table.num_rows == len(idx) else (None, None)

    def _checks(self, t: pa.Table, idx: list[int]) -> tuple[pa.Table, list[int]]:
        """Rows every field accepts, typed for output, and the rows left to pydantic."""
        good = pa.array([True] * t.num_rows, pa.bool_())
        cols: dict[str, pa.Array] = {}
        for f in self.fields:
            ok, cols[f.name] = _check(f, t.column(f.name).combine_chunks())
            good = pc.and_(good, ok)
        index = pa.array(idx, pa.int64())
        doubtful = pc.filter(index, pc.invert(good)).to_pylist()
        if doubtful:
            cols = {k: pc.filter(v, good) for k, v in cols.items()}
            index = pc.filter(index, good)
        for f in self.fields:
            if f.kind != "datetime":
                continue
            timed = _cast_times(f, cols, index)
            if timed is None:  # something the calendar check missed: pydantic
                return self._with_index.empty_table(), idx
            cols, index, left = timed
            doubtful += left
        cols["_index"] = index
        return pa.table(cols, schema=self._with_index), doubtful

    # ------------------------------------------------------------------ slow path
    def _slow(
        self, values: Sequence[bytes | None], idx: list[int]
    ) -> tuple[pa.Table, list[tuple[int, str, str]]]:
        rows: list[dict[str, Any]] = []
        rejects: list[tuple[int, str, str]] = []
        for i in idx:
            raw = values[i]
            if not raw:
                rejects.append((i, "empty_message", "message has no value"))
                continue
            try:
                ev = self.model.model_validate_json(raw)
            except ValidationError as exc:
                reason, detail = violation_reason(exc)
                rejects.append((i, reason, detail))
                continue
            row = dict(ev.__dict__)
            for f in self.fields:
                if f.kind == "uuid":
                    row[f.name] = str(row[f.name])
            row["_index"] = i
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=self._with_index), rejects


def validate_isolated(validator: BatchValidator, values: list[bytes | None]) -> BatchResult:
    """``validator.validate(values)``; should it fail (a bug: validation is pure and must
    never raise), the records it fails on are isolated and rejected as ``internal_error``,
    and the rest validated as usual."""
    try:
        return validator.validate(values)
    except Exception as first:
        log.error("validation failed on a batch; isolating the records: %s", type(first).__name__)
    iso = isolate(
        range(len(values)),
        lambda part: validator.validate([values[i] for i in part]),
        poison=lambda exc: isinstance(exc, Exception),
    )
    tables, rejects = [], []
    for part, res in iso.done:
        where = np.array(part, dtype=np.int64)
        local = res.table.column("_index").to_numpy()
        tables.append(res.table.set_column(
            res.table.schema.get_field_index("_index"), "_index", pa.array(where[local])
        ))  # fmt: skip
        rejects += [(part[i], reason, detail) for i, reason, detail in res.rejects]
    rejects += [
        (i, "internal_error", f"validation failed: {type(exc).__name__}") for i, exc in iso.failed
    ]
    table = pa.concat_tables(tables).sort_by("_index") if tables else validator.validate([]).table
    return BatchResult(table=table, rejects=sorted(rejects), slow_path=len(values))
