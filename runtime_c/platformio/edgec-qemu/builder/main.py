"""SCons builder of the edgec-qemu dev-platform (used by the [env:qemu] of an edgec project's platformio.ini).

It links one ELF for a QEMU board: the model (the project folder as a library, through lib_deps and
library.json), edgec's test harness, semihosting and the board's startup code and linker script (runtime/).
The cross compiler is the one on PATH: nothing comes from PlatformIO's registry. What to use comes from the
env's options, written by edgec from the target: custom_edgec_cc, _cflags, _ldflags, _libs, _board, _qemu
and _input_bytes (one input record).

  pio run -e qemu            builds .pio/build/qemu/firmware.elf
  pio run -e qemu -t exec    and runs it under QEMU in .pio/build/qemu: the harness reads edgec_in.bin
                             (one record of zeros is written if there is none) and writes edgec_out.bin
"""

import os
import subprocess

from SCons.Script import Default, DefaultEnvironment

env = DefaultEnvironment()


def option(name):
    return env.GetProjectOption("custom_edgec_" + name).split()


cc = option("cc")[0]
tools = cc[: -len("gcc")]  # e.g. "arm-none-eabi-"
cpu_flags = option("cflags")
board_name = option("board")[0]
runtime = os.path.join(env.subst("$PROJECT_DIR"), "runtime")
board = os.path.join(runtime, "boards", board_name)

env.Replace(CC=cc, AS=cc, LINK=cc, AR=tools + "ar", RANLIB=tools + "ranlib", SIZETOOL=tools + "size",
            PROGNAME="firmware", PROGSUFFIX=".elf", LDSCRIPT_PATH=os.path.join(board, "link.ld"))
# As edgec's own firmware builds (edgec.toolchain.runner): flash HAL on memory, test RNG, semihosting.
env.Append(CFLAGS=["-std=c99"], CCFLAGS=cpu_flags + ["-ffunction-sections", "-fdata-sections"],
           CPPDEFINES=["EDGEC_FLASH_MEM", "EDGEC_TRAIN_TEST_RNG", "EDGEC_SEMIHOSTING"],
           CPPPATH=[os.path.join(env.subst("$PROJECT_DIR"), "include"), os.path.join(runtime, "semihost")],
           LINKFLAGS=cpu_flags + option("ldflags") + ["-Wl,-Map=" + os.path.join("$BUILD_DIR", "firmware.map")],
           LIBS=[lib[len("-l"):] for lib in option("libs")])
if os.path.isdir(os.path.join(board, "include")):  # a libc-less target: the board brings <string.h> & co.
    env.Append(CPPPATH=[os.path.join(board, "include")])

# The harness is the main program (build_src_filter leaves out the Arduino demo in src_dir).
env.BuildSources(os.path.join("$BUILD_DIR", "runtime"), runtime,
                 ["-<*>", "+<harness/*.c>", "+<semihost/*.c>", f"+<boards/{board_name}/*.c>"])
program = env.BuildProgram()


def run_in_qemu(target, source, env):
    work = env.subst("$BUILD_DIR")
    records = os.path.join(work, "edgec_in.bin")
    if not os.path.isfile(records):
        with open(records, "wb") as f:
            f.write(bytes(int(option("input_bytes")[0])))
    cmd = ["timeout", "60", *option("qemu"), "-display", "none", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-kernel", source[0].get_abspath()]
    print(" ".join(cmd))
    code = subprocess.call(cmd, cwd=work)
    print(f"exit code {code}; outputs in {os.path.join(work, 'edgec_out.bin')}")
    return code


env.AddPlatformTarget("exec", program, env.VerboseAction(run_in_qemu, "Running $SOURCE under QEMU"),
                      "Run under QEMU")
Default(program)
