"""How the committed din and ChampSim samples were made (seeded; rerun to regenerate them).

sample.lackey is the start and end of a real ``valgrind --tool=lackey --trace-mem=yes /bin/true``.
"""

import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(4)


def din() -> None:
    lines = []
    for i in range(150):
        label = int(rng.choice([0, 1, 2, 2, 3, 4])) if i else 2
        address = int(rng.integers(0, 1 << 47))
        prefix = "0x" if i % 3 == 0 else ""
        comment = " this is a comment" if i % 7 == 0 else ""
        lines.append(f"{label} {prefix}{address:x}{comment}")
    lines.insert(40, "")
    with open(os.path.join(HERE, "sample.din"), "w") as f:
        f.write("\n".join(lines) + "\n")


def champsim(name: str, destinations: int, count: int) -> None:
    records = []
    for _ in range(count):
        ip = int(rng.integers(0x400000, 0x500000))
        memory = [int(a) if rng.random() < 0.3 else 0 for a in rng.integers(1 << 12, 1 << 47, destinations + 4)]
        branch = int(rng.random() < 0.2)
        registers = bytes(int(r) for r in rng.integers(0, 64, destinations + 4))
        if destinations == 2:      # input_instr: 64 bytes
            record = struct.pack("<QBB6s2Q4Q", ip, branch, branch & int(rng.random() < 0.5), registers, *memory)
        else:                      # cloudsuite_instr: 96 bytes
            record = struct.pack("<QBB8s6x4Q4Q2s6x", ip, branch, branch & int(rng.random() < 0.5), registers,
                                 *memory, bytes([1, 0]))
        records.append(record)
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(b"".join(records))


din()
champsim("sample.champsim", 2, 40)
champsim("sample.cloudsuite.champsim", 4, 30)
