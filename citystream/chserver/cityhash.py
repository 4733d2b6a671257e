"""CityHash v1.0.2 128-bit: the exact variant ClickHouse uses to checksum compressed blocks.

Newer CityHash releases give different values, which clients would reject, so
the old algorithm is kept here in pure Python (blocks are at most a few MiB).
"""

from __future__ import annotations

import struct

_M = 0xFFFFFFFFFFFFFFFF
_K0 = 0xC3A5C85C97CB3127
_K1 = 0xB492B66FBE98F273
_K2 = 0x9AE16A3B2F90404F
_K3 = 0xC949D7C7509E6557
_KMUL = 0x9DDFEA08EB382D69

_u64 = struct.Struct("<Q").unpack_from
_u32 = struct.Struct("<I").unpack_from


def _f64(s: bytes, o: int) -> int:
    return _u64(s, o)[0]


def _rot(v: int, shift: int) -> int:
    return v if shift == 0 else ((v >> shift) | (v << (64 - shift))) & _M


def _shift_mix(v: int) -> int:
    return v ^ (v >> 47)


def _hash16(u: int, v: int) -> int:
    a = ((u ^ v) * _KMUL) & _M
    a ^= a >> 47
    b = ((v ^ a) * _KMUL) & _M
    b ^= b >> 47
    return (b * _KMUL) & _M


def _len0to16(s: bytes, o: int, n: int) -> int:
    if n > 8:
        a = _f64(s, o)
        b = _f64(s, o + n - 8)
        return _hash16(a, _rot((b + n) & _M, n)) ^ b
    if n >= 4:
        a = _u32(s, o)[0]
        return _hash16((n + (a << 3)) & _M, _u32(s, o + n - 4)[0])
    if n > 0:
        y = (s[o] + (s[o + (n >> 1)] << 8)) & 0xFFFFFFFF
        z = (n + (s[o + n - 1] << 2)) & 0xFFFFFFFF
        return (_shift_mix(((y * _K2) & _M) ^ ((z * _K3) & _M)) * _K2) & _M
    return _K2


def _murmur(s: bytes, o: int, n: int, a: int, b: int) -> tuple[int, int]:
    c = d = 0
    rest = n - 16
    if rest <= 0:
        a = (_shift_mix((a * _K1) & _M) * _K1) & _M
        c = (b * _K1 + _len0to16(s, o, n)) & _M
        d = _shift_mix((a + (_f64(s, o) if n >= 8 else c)) & _M)
    else:
        c = _hash16((_f64(s, o + n - 8) + _K1) & _M, a)
        d = _hash16((b + n) & _M, (c + _f64(s, o + n - 16)) & _M)
        a = (a + d) & _M
        while True:
            a ^= (_shift_mix((_f64(s, o) * _K1) & _M) * _K1) & _M
            a = (a * _K1) & _M
            b ^= a
            c ^= (_shift_mix((_f64(s, o + 8) * _K1) & _M) * _K1) & _M
            c = (c * _K1) & _M
            d ^= c
            o += 16
            rest -= 16
            if rest <= 0:
                break
    a = _hash16(a, c)
    b = _hash16(d, b)
    return a ^ b, _hash16(b, a)


def _weak32(s: bytes, o: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = struct.unpack_from("<4Q", s, o)
    a = (a + w) & _M
    b = _rot((b + a + z) & _M, 21)
    c = a
    a = (a + x + y) & _M
    b = (b + _rot(a, 44)) & _M
    return (a + z) & _M, (b + c) & _M


def _city128_seeded(s: bytes, o: int, n: int, x: int, y: int) -> tuple[int, int]:
    if n < 128:
        return _murmur(s, o, n, x, y)
    z = (n * _K1) & _M
    v0 = (_rot(y ^ _K1, 49) * _K1 + _f64(s, o)) & _M
    v1 = (_rot(v0, 42) * _K1 + _f64(s, o + 8)) & _M
    w0 = (_rot((y + z) & _M, 35) * _K1 + x) & _M
    w1 = (_rot((x + _f64(s, o + 88)) & _M, 53) * _K1) & _M
    while n >= 128:
        for _ in (0, 1):
            x = (_rot((x + y + v0 + _f64(s, o + 16)) & _M, 37) * _K1) & _M
            y = (_rot((y + v1 + _f64(s, o + 48)) & _M, 42) * _K1) & _M
            x ^= w1
            y ^= v0
            z = _rot(z ^ w0, 33)
            v0, v1 = _weak32(s, o, (v1 * _K1) & _M, (x + w0) & _M)
            w0, w1 = _weak32(s, o + 32, (z + w1) & _M, y)
            z, x = x, z
            o += 64
        n -= 128
    y = (y + _rot(w0, 37) * _K0 + z) & _M
    x = (x + _rot((v0 + z) & _M, 49) * _K0) & _M
    done = 0
    while done < n:
        done += 32
        y = (_rot((y - x) & _M, 42) * _K0 + v1) & _M
        w0 = (w0 + _f64(s, o + n - done + 16)) & _M
        x = (_rot(x, 49) * _K0 + w0) & _M
        w0 = (w0 + v0) & _M
        v0, v1 = _weak32(s, o + n - done, v0, v1)
    x = _hash16(x, v0)
    y = _hash16(y, w0)
    return (_hash16((x + v1) & _M, w1) + y) & _M, _hash16((x + w1) & _M, (y + v1) & _M)


def cityhash128(data: bytes) -> tuple[int, int]:
    """CityHash v1.0.2 (low, high): the checksum ClickHouse puts before every compressed block."""
    data = bytes(data)
    n = len(data)
    if n >= 16:
        return _city128_seeded(data, 16, n - 16, _f64(data, 0) ^ _K3, _f64(data, 8))
    if n >= 8:
        return _city128_seeded(data, 0, 0, _f64(data, 0) ^ ((n * _K0) & _M), _f64(data, n - 8) ^ _K1)
    return _city128_seeded(data, 0, n, _K0, _K1)
