/*
 * c_counter: the counter worker written in C against wasi-libc, to show that a worker
 * need not be Rust and to exercise the WASI calls stdio makes (fd_write and friends).
 *
 * Same protocol as the Rust counter: every message gets a 16-byte reply, the number of
 * messages seen so far including this one (u64, little-endian), then the FNV-1a 64-bit
 * hash of all bytes of all messages so far (u64, little-endian).
 *
 * Build (see xtask/src/workers.rs):
 *   clang --target=wasm32-wasi -mexec-model=reactor -O2 --sysroot=/usr \
 *     -Wl,--strip-debug -o c_counter.wasm counter.c
 * The reactor model exports _initialize, which the host calls before roam_init.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define EXPORT(name) __attribute__((export_name(name)))

/* roam.post_message(ptr, len): the host copies len bytes at ptr before returning. */
__attribute__((import_module("roam"), import_name("post_message")))
void roam_post_message(const uint8_t *ptr, int32_t len);

#define FNV_OFFSET UINT64_C(0xcbf29ce484222325)
#define FNV_PRIME UINT64_C(0x100000001b3)

/* The worker state lives in linear memory, so it moves with the worker. */
static uint64_t messages_seen;
static uint64_t running_hash = FNV_OFFSET;

static void put_u64_le(uint8_t *out, uint64_t value) {
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(value >> (8 * i));
    }
}

/* Called once, on the worker's first start (never after a move). */
EXPORT("roam_init") void roam_init(void) {
    printf("c_counter: ready\n");
    /* stdout is fully buffered when it is not a terminal: push the line out now. */
    fflush(stdout);
}

/*
 * A buffer for the next message. Even an empty message gets a real (non-null) buffer;
 * NULL (0) means memory is exhausted.
 */
EXPORT("roam_alloc") uint8_t *roam_alloc(int32_t len) {
    if (len < 0) {
        return NULL;
    }
    return malloc(len > 0 ? (size_t)len : 1);
}

/* Handles the message in a roam_alloc buffer, which is ours to free. */
EXPORT("roam_on_message") void roam_on_message(uint8_t *ptr, int32_t len) {
    uint64_t hash = running_hash;
    for (int32_t i = 0; i < len; i++) {
        hash ^= ptr[i];
        hash *= FNV_PRIME;
    }
    running_hash = hash;
    messages_seen++;
    free(ptr);

    uint8_t reply[16];
    put_u64_le(reply, messages_seen);
    put_u64_le(reply + 8, running_hash);
    roam_post_message(reply, (int32_t)sizeof reply);
}
