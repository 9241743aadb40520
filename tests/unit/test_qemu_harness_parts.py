"""The QEMU harness's pure parts, checked against independent readers:
the newc archive against GNU cpio, the .modinfo reader against a hand-built
ELF64 object (the real modules are proven by the guest boot itself)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from tests.harness.qemu_guest import _Cpio, modinfo


def test_newc_archive_reads_back_with_gnu_cpio(tmp_path: Path) -> None:
    c = _Cpio()
    c.dir("bin")
    c.file("bin/tool", b"#!/bin/sh\necho odd-length\n", 0o755)
    c.file("empty", b"")
    c.chardev("console", 5, 1)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(c.finish())

    listing = subprocess.run(
        ["cpio", "-itv"], input=archive.read_bytes(), capture_output=True, check=True
    ).stdout.decode()
    names = [line.split()[-1] for line in listing.splitlines()]
    assert names == ["bin", "bin/tool", "empty", "console"]
    assert listing.splitlines()[1].startswith("-rwxr-xr-x")
    assert listing.splitlines()[3].startswith("crw-------")
    content = subprocess.run(
        ["cpio", "-i", "--to-stdout", "bin/tool"],
        input=archive.read_bytes(),
        capture_output=True,
        check=True,
    ).stdout
    assert content == b"#!/bin/sh\necho odd-length\n"


def _elf_with_sections(sections: dict[str, bytes]) -> bytes:
    """A minimal ELF64 relocatable object holding only the given sections."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    body = b"".join(sections.values()) + names
    shoff = 64 + len(body)
    headers = [bytes(64)]  # SHN_UNDEF
    offset, name_at = 64, 1
    for name, data in [*sections.items(), (".shstrtab", names)]:
        headers.append(struct.pack("<IIQQQQIIQQ", name_at, 1, 0, 0, offset, len(data), 0, 0, 1, 0))
        offset += len(data)
        name_at += len(name) + 1
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(headers), len(headers) - 1
    )
    return header + body + b"".join(headers)


def test_modinfo_reads_depends_from_the_modinfo_section_only() -> None:
    data = _elf_with_sections(
        {
            ".text": b"depends=decoy\0",
            ".modinfo": b"license=GPL\0depends=tunnel4,ip_tunnel\0alias=tunl0\0alias=x\0",
        }
    )
    info = modinfo(data)
    assert info["depends"] == ["tunnel4,ip_tunnel"]
    assert info["alias"] == ["tunl0", "x"]
    with pytest.raises(ValueError):
        modinfo(b"not an elf at all")
