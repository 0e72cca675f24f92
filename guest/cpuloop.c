/*
 * cpuloop: a CPU-bound integer benchmark for the kemari guest.
 *
 * Runs a fixed number of xorshift64 + multiply-add steps and prints
 *
 *     CPULOOP <iterations> <elapsed_ns> <checksum>
 *
 * elapsed_ns comes from clock_gettime(CLOCK_MONOTONIC); checksum is 16 hex
 * digits and depends only on <iterations>, so it doubles as a correctness
 * check for the emulator's integer ALU. Usage: cpuloop [iterations]
 *
 * Build: riscv64-linux-gnu-gcc -O2 -static -o cpuloop cpuloop.c
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_ITERATIONS 500000000ULL

static uint64_t now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    uint64_t iterations = DEFAULT_ITERATIONS;
    if (argc > 1) {
        char *end;
        iterations = strtoull(argv[1], &end, 0);
        if (*argv[1] == '\0' || *end != '\0') {
            fprintf(stderr, "usage: %s [iterations]\n", argv[0]);
            return 2;
        }
    }

    uint64_t x = 0x9e3779b97f4a7c15ULL;
    uint64_t acc = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc * 6364136223846793005ULL + (x ^ i);
    }
    uint64_t t1 = now_ns();

    printf("CPULOOP %" PRIu64 " %" PRIu64 " %016" PRIx64 "\n",
           iterations, t1 - t0, acc);
    return 0;
}
