# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# distutils: libraries = crypto
# distutils: define_macros = OPENSSL_SUPPRESS_DEPRECATED=1
"""Compiled PBKDF2-HMAC-SHA512 (RFC 8018): the fast twin of ``mqttd/access/_kdf_py.py``
(``hashlib.pbkdf2_hmac``), the same bytes for the same input (tests/test_kdf.py).

Why: a password file CONNECT (mosquitto_passwd's 101 rounds) spent ~60 µs in
``hashlib.pbkdf2_hmac``, OpenSSL 3's ``PKCS5_PBKDF2_HMAC``, which goes through the EVP
provider layer and sets its HMAC up again for every round. Here the HMAC key's inner and
outer SHA-512 states are computed once and copied (a plain struct) for each round: a round
is the two compressions it must cost and little else (each one ``SHA512_Transform`` of a
block padded once). OpenSSL's low-level SHA-512 (its assembly) does the compressions; its low-level API is deprecated in 3.0 but exported, and
the EVP interface would bring back the per-round overhead this avoids. The GIL is released
while hashing, as hashlib does (the chain's hashing threads run dearer files in parallel).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset


cdef extern from "openssl/sha.h" nogil:
    ctypedef unsigned long long SHA_LONG64
    ctypedef struct SHA512_CTX:
        SHA_LONG64 h[8]  # the chaining state (public in sha.h)
    int SHA512_Init(SHA512_CTX *c)
    int SHA512_Update(SHA512_CTX *c, const void *data, size_t length)
    int SHA512_Final(unsigned char *md, SHA512_CTX *c)
    void SHA512_Transform(SHA512_CTX *c, const unsigned char *data)


cdef extern from "sha512x.h" nogil:
    enum: MQTTD_X_FAST  # 1 where the side-by-side rounds are built for the CPU (x86-64)
    void mqttd_pbkdf2_rounds_x4(const uint64_t *ist, const uint64_t *ost, uint64_t *u,
                                uint64_t *t, unsigned long rounds)
    void mqttd_pbkdf2_rounds_x8(const uint64_t *ist, const uint64_t *ost, uint64_t *u,
                                uint64_t *t, unsigned long rounds)


cdef enum:
    BLOCK = 128   # SHA-512's block
    DIGEST = 64   # and digest size
    LANES = 8     # passwords hashed side by side at most (sha512x.h)


cdef inline void _store_be(unsigned char *p, SHA_LONG64 v) noexcept nogil:
    # (compiled to one byte swap and store on little-endian machines)
    p[0] = <unsigned char>(v >> 56)
    p[1] = <unsigned char>(v >> 48)
    p[2] = <unsigned char>(v >> 40)
    p[3] = <unsigned char>(v >> 32)
    p[4] = <unsigned char>(v >> 24)
    p[5] = <unsigned char>(v >> 16)
    p[6] = <unsigned char>(v >> 8)
    p[7] = <unsigned char>v


cdef void _key_states(const unsigned char *pw, size_t pwlen, SHA512_CTX *inner,
                      SHA512_CTX *outer) noexcept nogil:
    """HMAC's inner and outer SHA-512 states after the key block (computed once a check)."""
    cdef unsigned char key[BLOCK]
    cdef unsigned char pad[BLOCK]
    cdef SHA512_CTX c
    cdef size_t i
    memset(key, 0, BLOCK)
    if pwlen > BLOCK:  # HMAC: a key longer than a block is hashed first
        SHA512_Init(&c)
        SHA512_Update(&c, pw, pwlen)
        SHA512_Final(key, &c)
        memset(&c, 0, sizeof(SHA512_CTX))
    else:
        memcpy(key, pw, pwlen)
    for i in range(BLOCK):
        pad[i] = key[i] ^ 0x36
    SHA512_Init(inner)
    SHA512_Update(inner, pad, BLOCK)
    for i in range(BLOCK):
        pad[i] = key[i] ^ 0x5C
    SHA512_Init(outer)
    SHA512_Update(outer, pad, BLOCK)
    # the key material does not stay on the stack
    memset(key, 0, BLOCK)
    memset(pad, 0, BLOCK)


cdef void _u1(const SHA512_CTX *inner, const SHA512_CTX *outer, const unsigned char *salt,
              size_t saltlen, unsigned long block, unsigned char *u) noexcept nogil:
    """U1 = HMAC(P, S || INT(block)), the first round of output block ``block``."""
    cdef unsigned char counter[4]
    cdef SHA512_CTX c
    counter[0] = (block >> 24) & 0xFF
    counter[1] = (block >> 16) & 0xFF
    counter[2] = (block >> 8) & 0xFF
    counter[3] = block & 0xFF
    memcpy(&c, inner, sizeof(SHA512_CTX))
    SHA512_Update(&c, salt, saltlen)
    SHA512_Update(&c, counter, 4)
    SHA512_Final(u, &c)
    memcpy(&c, outer, sizeof(SHA512_CTX))
    SHA512_Update(&c, u, DIGEST)
    SHA512_Final(u, &c)
    memset(&c, 0, sizeof(SHA512_CTX))


cdef void _derive(const unsigned char *pw, size_t pwlen, const unsigned char *salt,
                  size_t saltlen, unsigned long iterations, unsigned char *out,
                  size_t dklen) noexcept nogil:
    cdef unsigned char u[DIGEST]
    cdef unsigned char t[DIGEST]
    cdef unsigned char blk[BLOCK]
    cdef SHA512_CTX inner, outer, c
    cdef size_t i, n, done = 0
    cdef unsigned long r, block = 1
    _key_states(pw, pwlen, &inner, &outer)
    while done < dklen:
        _u1(&inner, &outer, salt, saltlen, block, u)
        memcpy(t, u, DIGEST)
        # U_j = HMAC(P, U_{j-1}); T ^= U_j. Both hashes of a round take a 64-byte message
        # after their 128-byte key block: one block each, always padded the same (0x80,
        # zeros, the length 192 bytes in bits), so each is one SHA512_Transform from the
        # key's state, whose output words are the next message (no Update/Final).
        memcpy(blk, u, DIGEST)
        blk[DIGEST] = 0x80
        memset(blk + DIGEST + 1, 0, BLOCK - DIGEST - 1)
        blk[BLOCK - 2] = (((BLOCK + DIGEST) * 8) >> 8) & 0xFF
        blk[BLOCK - 1] = ((BLOCK + DIGEST) * 8) & 0xFF
        r = 1
        while r < iterations:
            memcpy(c.h, inner.h, DIGEST)
            SHA512_Transform(&c, blk)
            for i in range(8):
                _store_be(blk + 8 * i, c.h[i])
            memcpy(c.h, outer.h, DIGEST)
            SHA512_Transform(&c, blk)
            for i in range(8):
                _store_be(blk + 8 * i, c.h[i])
            for i in range(DIGEST):
                t[i] ^= blk[i]
            r += 1
        n = dklen - done
        if n > DIGEST:
            n = DIGEST
        memcpy(out + done, t, n)
        done += n
        block += 1
    # the key material does not stay on the stack
    memset(blk, 0, BLOCK)
    memset(&inner, 0, sizeof(SHA512_CTX))
    memset(&outer, 0, sizeof(SHA512_CTX))
    memset(&c, 0, sizeof(SHA512_CTX))


def pbkdf2_sha512(bytes password, bytes salt, long long iterations, long long dklen=DIGEST):
    """``hashlib.pbkdf2_hmac("sha512", password, salt, iterations, dklen)``."""
    if iterations < 1:
        raise ValueError("iteration value must be greater than 0.")
    if iterations > 0xFFFFFFFF:
        raise OverflowError("iteration value is too great.")
    if dklen < 1:
        raise ValueError("key length must be greater than 0.")
    if dklen > 0xFFFFFFFF:
        raise OverflowError("key length is too great.")
    result = PyBytes_FromStringAndSize(NULL, dklen)
    cdef unsigned char *out = <unsigned char *>PyBytes_AS_STRING(result)
    cdef const unsigned char *pw = <const unsigned char *>PyBytes_AS_STRING(password)
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(salt)
    cdef size_t pwlen = len(password), saltlen = len(salt)
    cdef unsigned long it = <unsigned long>iterations
    cdef size_t n = <size_t>dklen
    with nogil:
        _derive(pw, pwlen, s, saltlen, it, out, n)
    return result


cdef inline uint64_t _load_be(const unsigned char *p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40)
            | (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16)
            | (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef void _derive_lanes(const unsigned char **pw, size_t *pwlen, const unsigned char **salt,
                        size_t *saltlen, size_t n, unsigned long iterations,
                        unsigned char **out) noexcept nogil:
    """PBKDF2 (64-byte output) of ``n`` (2..8) passwords with one iteration count, their
    rounds side by side in one vector (4 lanes for up to 4 passwords, else 8); unused lanes
    compute on zeros and are dropped."""
    cdef uint64_t ist[8 * LANES]
    cdef uint64_t ost[8 * LANES]
    cdef uint64_t u[8 * LANES]
    cdef uint64_t t[8 * LANES]
    cdef unsigned char first[DIGEST]
    cdef SHA512_CTX inner, outer
    cdef size_t lanes = 4 if n <= 4 else LANES
    cdef size_t l, j
    memset(ist, 0, sizeof(ist))
    memset(ost, 0, sizeof(ost))
    memset(u, 0, sizeof(u))
    for l in range(n):
        _key_states(pw[l], pwlen[l], &inner, &outer)
        _u1(&inner, &outer, salt[l], saltlen[l], 1, first)
        for j in range(8):
            ist[j * lanes + l] = inner.h[j]
            ost[j * lanes + l] = outer.h[j]
            u[j * lanes + l] = _load_be(first + 8 * j)
    memcpy(t, u, sizeof(t))
    if iterations > 1:
        if lanes == 4:
            mqttd_pbkdf2_rounds_x4(ist, ost, u, t, iterations - 1)
        else:
            mqttd_pbkdf2_rounds_x8(ist, ost, u, t, iterations - 1)
    for l in range(n):
        for j in range(8):
            _store_be(out[l] + 8 * j, t[j * lanes + l])
    memset(ist, 0, sizeof(ist))
    memset(ost, 0, sizeof(ost))
    memset(&inner, 0, sizeof(SHA512_CTX))
    memset(&outer, 0, sizeof(SHA512_CTX))


def pbkdf2_sha512_many(list passwords, list salts, long long iterations):
    """``[pbkdf2_sha512(p, s, iterations) for p, s in zip(passwords, salts)]`` (64-byte
    keys), the same bytes, computed up to eight at a time side by side (``sha512x.h``): a
    storm of CONNECTs read in one loop turn is hashed in about a third of the time."""
    if iterations < 1:
        raise ValueError("iteration value must be greater than 0.")
    if iterations > 0xFFFFFFFF:
        raise OverflowError("iteration value is too great.")
    # Tuples: the bytes the pointers point into stay alive while the GIL is released, even
    # if another thread changes the caller's lists meanwhile.
    cdef tuple pws = tuple(passwords), salt_t = tuple(salts)
    cdef Py_ssize_t total = len(pws)
    if len(salt_t) != total:
        raise ValueError("as many salts as passwords")
    cdef list results = []
    cdef const unsigned char *pw[LANES]
    cdef size_t pwlen[LANES]
    cdef const unsigned char *sp[LANES]
    cdef size_t saltlen[LANES]
    cdef unsigned char *out[LANES]
    cdef unsigned long it = <unsigned long>iterations
    cdef Py_ssize_t start = 0, k
    cdef size_t n
    cdef bytes p, s, r
    while start < total:
        n = <size_t>min(total - start, LANES)
        for k in range(<Py_ssize_t>n):
            p = pws[start + k]  # (TypeError for anything but bytes)
            s = salt_t[start + k]
            r = PyBytes_FromStringAndSize(NULL, DIGEST)
            results.append(r)
            pw[k] = <const unsigned char *>PyBytes_AS_STRING(p)
            pwlen[k] = len(p)
            sp[k] = <const unsigned char *>PyBytes_AS_STRING(s)
            saltlen[k] = len(s)
            out[k] = <unsigned char *>PyBytes_AS_STRING(r)
        with nogil:
            if n == 1 or not MQTTD_X_FAST:  # one alone: the scalar loop costs less
                for k in range(<Py_ssize_t>n):
                    _derive(pw[k], pwlen[k], sp[k], saltlen[k], it, out[k], DIGEST)
            else:
                _derive_lanes(pw, pwlen, sp, saltlen, n, it, out)
        start += <Py_ssize_t>n
    return results
