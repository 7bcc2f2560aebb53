"""File offsets of a shared library's exported functions: where a uprobe on
them goes.  The dynamic symbol table (.dynsym), 64-bit little-endian ELF
only (podsight is built for amd64); a stripped library still has it."""
from __future__ import annotations

import struct

__all__ = ["ElfError", "function_offsets"]

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_DYNSYM, PT_LOAD, STT_FUNC = 11, 1, 2


class ElfError(ValueError):
    pass


def function_offsets(path: str, names: set[str]) -> dict[str, int]:
    """name → file offset of each defined function of ``names`` the file exports."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
    (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = _EHDR.unpack_from(data)
    loads = [(vaddr, memsz, offset) for ptype, _, offset, vaddr, _, _, memsz, _ in
             (_PHDR.unpack_from(data, phoff + i * phentsize) for i in range(phnum)) if ptype == PT_LOAD]
    sections = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, int] = {}
    for _, stype, _, _, offset, size, link, _, _, entsize in sections:
        if stype != SHT_DYNSYM:
            continue
        strtab_off = sections[link][4]
        for i in range(size // (entsize or _SYM.size)):
            st_name, info, _, shndx, value, _ = _SYM.unpack_from(data, offset + i * _SYM.size)
            if shndx == 0 or value == 0 or info & 0xF != STT_FUNC:
                continue  # undefined here (imported), or not a plain function (an ifunc is its resolver)
            end = data.index(b"\0", strtab_off + st_name)
            name = data[strtab_off + st_name:end].decode(errors="replace")
            if name in names:
                for vaddr, memsz, off in loads:
                    if vaddr <= value < vaddr + memsz:
                        found[name] = value - vaddr + off
                        break
    return found
