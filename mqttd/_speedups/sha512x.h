/* PBKDF2-HMAC-SHA512's rounds for several passwords at once, one per lane of a SIMD vector.
 *
 * Why: a CONNECT storm against a mosquitto_passwd file costs one PBKDF2 per client, and a
 * round of PBKDF2 is two SHA-512 compressions whose 80 steps depend on each other: one
 * hash cannot use more than a sliver of the core. Eight hashes side by side (one 64-bit
 * lane each of an AVX-512 register, four of an AVX2 one) do eight times the work for about
 * 2.5 times one compression's time (bench/RESULTS.md, "CONNECT with a password file:
 * hashes side by side"). The technique is Intel's "multi-buffer" hashing (their ISA-L
 * crypto library); this is its plain form, written with GCC's vector extensions, so the
 * compiler emits the instructions of whichever clone the CPU runs (target_clones picks
 * AVX-512, AVX2 or baseline x86-64 at load time; elsewhere the vectors are lowered to
 * what the target has, still correct).
 *
 * What a lane computes is exactly _kdf.pyx's scalar loop: from the HMAC key's inner and
 * outer states (``ist``/``ost``, computed once per password), each round hashes U (64
 * bytes) after the key block, so the message is always U, 0x80, zeros and the length 192
 * bytes in bits: one block, whose words are U's words (no byte order work between rounds).
 * Arrays are word-major: word j of lane l at [j * LANES + l].
 */
#ifndef MQTTD_SHA512X_H
#define MQTTD_SHA512X_H

#include <stdint.h>
#include <string.h>

/* The clones need GCC 12 (an "arch=" clone) and glibc's ifunc. Elsewhere (clang, musl,
 * other CPUs) the vectors would be lowered to 128-bit code with no 64-bit rotate, likely
 * slower than one hash after another with OpenSSL's SHA-512 (aarch64 has instructions for
 * it): MQTTD_X_FAST 0 tells _kdf.pyx to hash one by one there (and on x86-64 built with
 * -DMQTTD_X_SCALAR, which is how that path was checked: same bytes as hashlib). */
#if !defined(MQTTD_X_SCALAR) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 \
    && defined(__GLIBC__)
#define MQTTD_X_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#define MQTTD_X_FAST 1
#else
#define MQTTD_X_CLONES
#define MQTTD_X_FAST 0
#endif

static const uint64_t mqttd_x_K[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL};

#define MQTTD_X_ROR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))

/* One body per lane count: the vector type is the only difference. */
#define MQTTD_X_ROUNDS(NAME, LANES)                                                         \
typedef uint64_t NAME##_v __attribute__((vector_size(8 * LANES)));                          \
MQTTD_X_CLONES                                                                               \
static void NAME(const uint64_t *ist, const uint64_t *ost, uint64_t *u, uint64_t *t,        \
                 unsigned long rounds)                                                       \
{                                                                                            \
    NAME##_v I[8], O[8], U[8], T[8], w[16];                                                  \
    unsigned long r;                                                                         \
    int i, pass;                                                                             \
    memcpy(I, ist, sizeof(I));                                                               \
    memcpy(O, ost, sizeof(O));                                                               \
    memcpy(U, u, sizeof(U));                                                                 \
    memcpy(T, t, sizeof(T));                                                                 \
    for (r = 0; r < rounds; r++) {                                                           \
        for (pass = 0; pass < 2; pass++) {  /* the inner hash, then the outer */            \
            const NAME##_v *st = pass ? O : I;                                               \
            NAME##_v a = st[0], b = st[1], c = st[2], d = st[3];                             \
            NAME##_v e = st[4], f = st[5], g = st[6], h = st[7];                             \
            for (i = 0; i < 8; i++)                                                          \
                w[i] = U[i];                                                                 \
            w[8] = (NAME##_v){0} + 0x8000000000000000ULL;                                    \
            for (i = 9; i < 15; i++)                                                         \
                w[i] = (NAME##_v){0};                                                        \
            w[15] = (NAME##_v){0} + (uint64_t)(128 + 64) * 8;                                \
            for (i = 0; i < 80; i++) {                                                       \
                NAME##_v wi, s1, ch, t1, s0, mj;                                             \
                if (i < 16) {                                                                \
                    wi = w[i];                                                               \
                } else {                                                                     \
                    NAME##_v x = w[(i - 15) & 15], y = w[(i - 2) & 15];                      \
                    wi = w[i & 15] = w[i & 15] + w[(i - 7) & 15]                             \
                        + (MQTTD_X_ROR(x, 1) ^ MQTTD_X_ROR(x, 8) ^ (x >> 7))                 \
                        + (MQTTD_X_ROR(y, 19) ^ MQTTD_X_ROR(y, 61) ^ (y >> 6));              \
                }                                                                            \
                s1 = MQTTD_X_ROR(e, 14) ^ MQTTD_X_ROR(e, 18) ^ MQTTD_X_ROR(e, 41);           \
                ch = (e & f) ^ (~e & g);                                                     \
                t1 = h + s1 + ch + mqttd_x_K[i] + wi;                                        \
                s0 = MQTTD_X_ROR(a, 28) ^ MQTTD_X_ROR(a, 34) ^ MQTTD_X_ROR(a, 39);           \
                mj = (a & b) ^ (a & c) ^ (b & c);                                            \
                h = g; g = f; f = e; e = d + t1;                                             \
                d = c; c = b; b = a; a = t1 + s0 + mj;                                       \
            }                                                                                \
            U[0] = st[0] + a; U[1] = st[1] + b; U[2] = st[2] + c; U[3] = st[3] + d;          \
            U[4] = st[4] + e; U[5] = st[5] + f; U[6] = st[6] + g; U[7] = st[7] + h;          \
        }                                                                                    \
        for (i = 0; i < 8; i++)                                                              \
            T[i] ^= U[i];                                                                    \
    }                                                                                        \
    memcpy(u, U, sizeof(U));                                                                 \
    memcpy(t, T, sizeof(T));                                                                 \
    /* the key material does not stay on the stack */                                        \
    memset(I, 0, sizeof(I));                                                                 \
    memset(O, 0, sizeof(O));                                                                 \
    memset(w, 0, sizeof(w));                                                                 \
}

MQTTD_X_ROUNDS(mqttd_pbkdf2_rounds_x4, 4)
MQTTD_X_ROUNDS(mqttd_pbkdf2_rounds_x8, 8)

#endif
