"""fortran_bridge/precipdiff.meta (CCPP-style metadata) agrees with the Fortran source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from precipdiff.io.cf import STANDARD_NAMES

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "fortran_bridge" / "precipdiff.F90"
META = REPO / "fortran_bridge" / "precipdiff.meta"
CCPP_UNITS = {"none", "flag", "count", "various"}  # CCPP's non-udunits unit words

Decl = dict[str, object]


def parse_meta(text: str) -> tuple[dict[str, str], dict[str, dict[str, object]]]:
    """{table property: value}, {procedure: {"props": {...}, "args": [(name, {...})]}}."""
    props: dict[str, str] = {}
    tables: dict[str, dict[str, object]] = {}
    section: dict[str, str] | None = None
    table: dict[str, object] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip() if raw.lstrip().startswith("#") else raw.rstrip()
        if not line.strip():
            continue
        if line.strip() == "[ccpp-table-properties]":
            section = props
        elif line.strip() == "[ccpp-arg-table]":
            table = {"props": {}, "args": []}
            section = table["props"]  # type: ignore[assignment]
        elif m := re.fullmatch(r"\[\s*(\w+)\s*\]", line.strip()):
            assert table is not None, line
            entry: dict[str, str] = {}
            table["args"].append((m.group(1), entry))  # type: ignore[attr-defined]
            section = entry
        else:
            key, _, value = line.strip().partition("=")
            assert section is not None and _, line
            section[key.strip()] = value.strip()
            if table is not None and section is table["props"] and key.strip() == "name":
                tables[value.strip()] = table
    return props, tables


def parse_fortran(text: str) -> tuple[dict[str, tuple[list[str], dict[str, Decl]]], dict[str, str]]:
    """{subroutine: (argument names, {arg: declaration})}, {specific: generic interface}."""
    subs: dict[str, tuple[list[str], dict[str, Decl]]] = {}
    for m in re.finditer(r"^\s*subroutine\s+(\w+)\s*\((.*?)\)\s*$", text, re.M | re.S):
        name = m.group(1)
        args = [a.strip() for a in m.group(2).replace("&", " ").split(",") if a.strip()]
        body = text[m.end() : text.index(f"end subroutine {name}", m.end())]
        decls: dict[str, Decl] = {}
        for line in body.splitlines():
            d = re.match(
                r"\s*(integer|real\((\w+)\)|character\(len=\*\)|logical)\s*,\s*intent\((\w+)\)"
                r"(.*?)::\s*(\w+)\s*(\(([^)]*)\))?",
                line,
            )
            if d is None or d.group(5) not in args:
                continue
            base = d.group(1).split("(")[0]
            kind = d.group(2) or ("len=*" if base == "character" else "")
            dims = d.group(7)
            decls[d.group(5)] = {
                "type": base,
                "kind": kind,
                "intent": d.group(3),
                "optional": "optional" in d.group(4),
                "rank": 0 if dims is None else dims.count(",") + 1,
            }
        subs[name] = (args, decls)
    generic: dict[str, str] = {}
    for m in re.finditer(r"interface\s+(\w+)\s*\n\s*module procedure\s+([\w,\s]+?)\n", text):
        for spec in m.group(2).split(","):
            generic[spec.strip()] = m.group(1)
    return subs, generic


@pytest.fixture(scope="module")
def parsed():
    return parse_meta(META.read_text()), parse_fortran(SOURCE.read_text())


def test_every_ccpp_entry_point_has_a_table(parsed) -> None:
    (props, tables), (subs, generic) = parsed
    assert props["name"] == "precipdiff" and props["type"] == "scheme"
    public = re.search(r"public\s*::(.*?)\n\n", SOURCE.read_text(), re.S)
    assert public is not None
    names = {n.strip() for n in public.group(1).replace("&", " ").split(",")}
    entry_points = set()
    for n in names:
        specifics = [s for s, g in generic.items() if g == n] or [n]
        for s in specifics:
            if s in subs:
                args, decls = subs[s]
                required = [a for a in args if not decls[a]["optional"]]
                if required[-2:] == ["errmsg", "errflg"]:  # a CCPP-style entry point
                    entry_points.add(s)
    assert entry_points == set(tables), sorted(entry_points ^ set(tables))
    assert len(entry_points) >= 15


def test_tables_match_the_source(parsed) -> None:
    (_, tables), (subs, generic) = parsed
    for name, table in tables.items():
        args, decls = subs[name]
        props: dict[str, str] = table["props"]  # type: ignore[assignment]
        assert props["type"] == "scheme"
        assert props.get("generic_interface", name) == generic.get(name, name), name
        meta_args = table["args"]  # type: ignore[assignment]
        assert [a for a, _ in meta_args] == args, name  # same arguments, same order
        for arg, entry in meta_args:
            d = decls[arg]
            where = f"{name}({arg})"
            assert entry["type"] == d["type"], where
            assert entry.get("kind", "") == d["kind"], where
            assert entry["intent"] == d["intent"], where
            assert (entry.get("optional", "False") == "True") == d["optional"], where
            dims = entry["dimensions"].strip("()")
            assert (0 if not dims else dims.count(",") + 1) == d["rank"], where
            for key in ("standard_name", "long_name", "units"):
                assert entry.get(key), f"{where}: no {key}"
        assert [a for a, _ in meta_args if not decls[a]["optional"]][-2:] == ["errmsg", "errflg"]


def test_standard_names_and_units(parsed) -> None:
    from cfunits import Units

    (_, tables), _ = parsed
    seen: dict[str, str] = {}
    for name, table in tables.items():
        for arg, entry in table["args"]:  # type: ignore[attr-defined]
            sn, units = entry["standard_name"], entry["units"]
            assert re.fullmatch(r"[a-z][a-z0-9_]*", sn), (name, arg, sn)
            assert seen.setdefault(sn, units) == units, f"{sn}: units differ across tables"
            if units not in CCPP_UNITS:
                assert Units(units).isvalid, (name, arg, units)
            if sn in STANDARD_NAMES:  # a CF standard name: units convert to canonical ones
                assert Units(units).equivalent(Units(STANDARD_NAMES[sn])), (sn, units)
    assert seen["ccpp_error_message"] == "none" and seen["ccpp_error_code"] == "1"
    assert seen["precipitation_flux"] == "kg m-2 s-1" and seen["air_pressure"] == "Pa"
