"""Health counters and the HAL tick hook of the generated C API, on the host with gcc."""

from __future__ import annotations

import subprocess

from edgec.pipeline import build
from support import shared_model

MAIN = r"""
#include <stdio.h>
#include "edgec_model.h"

static uint32_t now = 4294967000u; /* starts near the wrap-around on purpose */
uint32_t edgec_hal_ticks(void) { now += 100u; return now; }

int main(void)
{
    edgec_health_t h;
    if (edgec_run() != EDGEC_ERR_STATE) return 1;
    edgec_init();
    for (int i = 0; i < 3; i++) {
        if (edgec_run() != EDGEC_OK) return 2;
    }
    edgec_health(&h);
    edgec_health(NULL);
    printf("%u %u %u %u %u\n", (unsigned)h.inferences, (unsigned)h.last_ticks, (unsigned)h.max_ticks,
           (unsigned)h.arena_bytes, (unsigned)h.active_adapters);
    return 0;
}
"""


def test_health_counters_and_tick_hook(tmp_path):
    report = build(shared_model("tflite/hello_world_int8.tflite"), "host", tmp_path / "p")
    (tmp_path / "main.c").write_text(MAIN)
    exe = tmp_path / "t"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path / 'p' / 'include'}",
                    str(tmp_path / "main.c"), *map(str, sorted((tmp_path / "p" / "src").glob("*.c"))),
                    "-lm", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    # Each run reads the hook twice, 100 ticks apart, across a 32-bit wrap-around.
    assert out == ["3", "100", "100", str(report["arena_bytes"]), "0"]
