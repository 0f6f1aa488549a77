"""Proof on an FPU-less microcontroller: the C library on a Cortex-M3 under QEMU.

``run_on_cortex_m3(c_dir)`` builds a written C library (``lstmq export --c-dir``, with golden
clips) for QEMU's ``mps2-an385`` board (Cortex-M3, no FPU) with ``arm-none-eabi-gcc
-mcpu=cortex-m3 -mthumb -mfloat-abi=soft`` and no C library at all (a vector table, a
reset handler and a semihosting writer of its own), runs the golden clips, and reports:

- each clip's logits bit-exact with the jnp path (the golden vectors are jnp's);
- the soft-float routines in the linked image (``__aeabi_f*``, ``__aeabi_d*``, ``__*sf*``,
  ``__*df*``): there must be none;
- the library's own flash (.text + .rodata of lstmq_runtime.o and lstmq_model.o) and RAM
  (.data + .bss + the worst stack depth of lstmq_classify, from ``-fstack-usage`` and the
  call graph); the golden clips and the check program are not counted.

Needs the Debian packages gcc-arm-none-eabi and qemu-system-arm
(``scripts/install-device-tools.sh``).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

CPU_FLAGS = ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft")
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-Wdouble-promotion", "-Wfloat-conversion",
          "-O2", "-ffreestanding", "-fstack-usage", "-fcallgraph-info=su")
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-nm", "arm-none-eabi-size", "qemu-system-arm")
SOFT_FLOAT = re.compile(r"^(__aeabi_[fd]\w*|__\w*[sd]f\d?\w*|__\w*(sf|df)\w*)$")

LINKER_SCRIPT = """/* mps2-an385: 4 MB code SRAM at 0, 4 MB data SRAM at 0x20000000 */
MEMORY { CODE (rx) : ORIGIN = 0x00000000, LENGTH = 4M
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M }
ENTRY(reset_handler)
SECTIONS {
  .vectors : { KEEP(*(.vectors)) } > CODE
  .text : { *(.text*) } > CODE
  .rodata : { *(.rodata*) } > CODE
  .data : { _data_start = .; *(.data*) _data_end = .; } > RAM AT > CODE
  _data_load = LOADADDR(.data);
  .bss (NOLOAD) : { _bss_start = .; *(.bss*) *(COMMON) _bss_end = .; } > RAM
  _stack_top = ORIGIN(RAM) + LENGTH(RAM);
  /DISCARD/ : { *(.ARM.exidx*) *(.comment) }
}
"""

STARTUP = r"""/* Bare-metal start for QEMU mps2-an385: copy .data, clear .bss, run the check, report
 * over semihosting, exit. No C library. */
#include <stdint.h>

#include "lstmq.h"

extern uint32_t _data_start, _data_end, _data_load, _bss_start, _bss_end, _stack_top;
extern const int32_t LSTMQ_GOLDEN_COUNT;
int32_t lstmq_golden_check(void (*report)(int32_t, int32_t, const int32_t *, int32_t));

static int32_t semihost(int32_t op, const void *arg) {
  register int32_t r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

static void say(const char *text) { semihost(0x04, text); }  /* SYS_WRITE0 */

static void say_number(int32_t value) {
  char digits[12];
  int32_t i = 11;
  uint32_t v = value < 0 ? (uint32_t)(-(value + 1)) + 1u : (uint32_t)value;
  digits[i] = 0;
  do { digits[--i] = (char)('0' + v % 10u); v /= 10u; } while (v);
  if (value < 0) digits[--i] = '-';
  say(&digits[i]);
}

void *memset(void *target, int value, unsigned int count) {  /* for the compiler's own use */
  unsigned char *p = target;
  while (count--) *p++ = (unsigned char)value;
  return target;
}

void *memcpy(void *target, const void *source, unsigned int count) {
  unsigned char *p = target;
  const unsigned char *q = source;
  while (count--) *p++ = *q++;
  return target;
}

static void report(int32_t clip, int32_t label, const int32_t *logits, int32_t same) {
  int32_t c;
  say("clip "); say_number(clip); say(": label "); say(label >= 0 ? LSTMQ_CLASS_NAMES[label] : "?");
  say(", logits"); for (c = 0; c < LSTMQ_NUM_CLASSES; c++) { say(" "); say_number(logits[c]); }
  say(same ? " bit-exact\n" : " MISMATCH\n");
}

static int32_t check(void) {
  int32_t mismatches = lstmq_golden_check(report);
  say("lstmq check: "); say_number(LSTMQ_GOLDEN_COUNT - mismatches); say(" of ");
  say_number(LSTMQ_GOLDEN_COUNT); say(" clips bit-exact\n");
  return mismatches;
}

void reset_handler(void) {
  uint32_t *from = &_data_load, *to = &_data_start;
  int32_t block[2];
  while (to < &_data_end) *to++ = *from++;
  for (to = &_bss_start; to < &_bss_end; to++) *to = 0;
  block[0] = 0x20026;  /* ADP_Stopped_ApplicationExit */
  block[1] = check();
  semihost(0x20, block);  /* SYS_EXIT_EXTENDED: the number of mismatches is the exit code */
  for (;;) {}
}

static void halt(void) { for (;;) {} }

__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
  &_stack_top, (const void *)reset_handler, (const void *)halt, (const void *)halt,
  (const void *)halt, (const void *)halt, (const void *)halt, 0, 0, 0, 0,
  (const void *)halt, (const void *)halt, 0, (const void *)halt, (const void *)halt};
"""


class CortexMError(RuntimeError):
    """The toolchain is missing or the build, run or check failed."""


@dataclasses.dataclass(frozen=True)
class CortexM3Report:
    """Golden clips run and bit-exact, soft-float symbols linked, and the library's sections."""

    clips: int
    bit_exact: int
    soft_float_symbols: tuple[str, ...]
    text_bytes: int
    rodata_bytes: int
    data_bytes: int
    bss_bytes: int
    stack_bytes: int
    output: str

    @property
    def flash_bytes(self) -> int:
        return self.text_bytes + self.rodata_bytes

    @property
    def ram_bytes(self) -> int:
        return self.data_bytes + self.bss_bytes + self.stack_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "flash_bytes": self.flash_bytes,
                "ram_bytes": self.ram_bytes, "soft_float_symbols": list(self.soft_float_symbols)}


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0 and command[0] != "qemu-system-arm":
        raise CortexMError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done


def worst_stack(folder: Path, root: str = "lstmq_classify") -> int:
    """Deepest stack from ``root`` through the call graph (gcc ``-fcallgraph-info=su``)."""
    usage, calls = {}, {}
    for graph in folder.glob("*.ci"):
        text = graph.read_text()
        for title, label in re.findall(r'node: \{ title: "([^"]+)" label: "([^"]*)"', text):
            found = re.search(r"(\d+) bytes \((static|dynamic)", label)
            usage[title] = int(found.group(1)) if found else 0
        for source, target in re.findall(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"', text):
            calls.setdefault(source, set()).add(target)
    roots = [t for t in usage if t == root or t.endswith(f":{root}")]
    if not roots:
        raise CortexMError(f"no stack information for {root} in {folder}")

    def depth(node: str, seen: frozenset) -> int:
        below = [depth(n, seen | {node}) for n in calls.get(node, ()) if n not in seen]
        return usage.get(node, 0) + max(below, default=0)

    return max(depth(r, frozenset()) for r in roots)


def _sizes(elf: Path, folder: Path) -> dict[str, int]:
    done = _run(["arm-none-eabi-size", "-A", str(elf)], folder)
    sizes = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def run_on_cortex_m3(c_dir: str | Path, build: str | Path | None = None,
                     timeout: float = 600) -> CortexM3Report:
    """Builds the C library in ``c_dir`` (with its golden clips) for the Cortex-M3, runs it
    on QEMU mps2-an385 and checks it.

    Raises:
      CortexMError: a tool is missing, the build failed, or QEMU gave no verdict.
    """
    missing = missing_tools()
    if missing:
        raise CortexMError(f"missing {', '.join(missing)}: run scripts/install-device-tools.sh "
                           "(Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    c_dir = Path(c_dir).resolve()
    if not (c_dir / "lstmq_golden.c").is_file():
        raise CortexMError(f"{c_dir}: no golden clips (export with --golden N and the integer "
                           "front end)")
    folder = Path(build or c_dir / "cortex-m3").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mps2_an385.ld").write_text(LINKER_SCRIPT)
    (folder / "start.c").write_text(STARTUP)
    objects = []
    for source in (c_dir / "lstmq_runtime.c", c_dir / "lstmq_model.c", c_dir / "lstmq_golden.c",
                   folder / "start.c"):
        target = folder / (source.stem + ".o")
        _run(["arm-none-eabi-gcc", *CPU_FLAGS, *CFLAGS, f"-I{c_dir}", "-c", str(source), "-o",
              str(target)], folder)
        objects.append(str(target))
    elf = folder / "lstmq_check.elf"
    _run(["arm-none-eabi-gcc", *CPU_FLAGS, "-nostdlib", "-nostartfiles", "-T",
          str(folder / "mps2_an385.ld"), "-o", str(elf), *objects, "-lgcc"], folder)
    symbols = _run(["arm-none-eabi-nm", str(elf)], folder).stdout.split("\n")
    names = [line.split()[-1] for line in symbols if line.strip()]
    soft_float = tuple(sorted(n for n in names if SOFT_FLOAT.match(n)))
    done = _run(["qemu-system-arm", "-M", "mps2-an385", "-cpu", "cortex-m3", "-nographic",
                 "-monitor", "none", "-serial", "none", "-semihosting-config",
                 "enable=on,target=native", "-kernel", str(elf)], folder, timeout)
    output = done.stdout + done.stderr  # semihosting writes to QEMU's stderr
    verdict = re.search(r"lstmq check: (\d+) of (\d+) clips bit-exact", output)
    if verdict is None:
        raise CortexMError(f"QEMU gave no verdict (exit {done.returncode}):\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    sizes = {}
    for obj in objects[:2]:  # lstmq_runtime.o and lstmq_model.o: the library alone
        for name, size in _sizes(Path(obj), folder).items():
            sizes[name] = sizes.get(name, 0) + size
    return CortexM3Report(
        clips=int(verdict.group(2)), bit_exact=int(verdict.group(1)),
        soft_float_symbols=soft_float, text_bytes=sizes.get(".text", 0),
        rodata_bytes=sizes.get(".rodata", 0), data_bytes=sizes.get(".data", 0),
        bss_bytes=sizes.get(".bss", 0), stack_bytes=worst_stack(folder), output=output)
