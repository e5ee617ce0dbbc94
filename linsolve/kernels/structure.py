"""One-pass scans of a CSR matrix: its grid-stencil offsets and a content checksum.

:func:`grid_scan` reads every stored entry once and records what
:func:`linsolve.structure.find_grid` needs to decide whether the matrix is a
5/7-point stencil on a structured grid: the distinct coupling distances
``|j - i|`` (at most three; a fourth stops the scan at once, so a matrix that
is no grid stencil costs only the rows read until then), for every row which
of them it uses in which direction, its diagonal, and the entries in a
trailing border column. :func:`checksum_words` hashes a matrix's arrays for
the cheap "is this still the same matrix?" test of the solvers that keep a
preconditioner between calls.

Like every kernel here they take plain arrays, validate nothing and are
compiled with ``cache=True``; indices are cast to ``uint64`` before indexing
(see :mod:`.spmv`). At 128³ (one thread) the scan costs about 1.5 SpMVs and the
checksum about one (15× less than BLAKE2b).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["grid_scan", "checksum_words", "unreached_rows", "jacobi_gershgorin_radius", "MAX_OFFSETS"]

#: A 7-point stencil couples a cell to neighbours at three distances: 1, nz, ny*nz.
MAX_OFFSETS = 3


@njit(cache=True)
def grid_scan(indptr, indices, data, m, offsets, bits, diag, border):
    """Scan rows ``0..m-1``: stencil offsets, per-row direction bits, diagonal, border column.

    Entries equal to zero are ignored (an explicitly stored zero couples nothing).
    For the ``k``-th distinct distance ``offsets[k]`` met so far, row ``i`` gets
    bit ``2k`` in ``bits[i]`` when it couples to ``i + offsets[k]`` and bit
    ``2k + 1`` when it couples to ``i - offsets[k]``. Entries in columns
    ``>= m`` (a border) are added to ``border[i]`` instead.

    Parameters
    ----------
    indptr, indices, data : CSR arrays (sorted, duplicate-free rows)
    m : int
        Rows and columns ``< m`` form the inner block.
    offsets : int64 array of length :data:`MAX_OFFSETS`, written
    bits : uint8 array of length ``m``, written
    diag, border : float64 arrays of length ``m``, written

    Returns
    -------
    int
        Number of distinct distances found, or ``-1`` as soon as a fourth
        one appears (the outputs are then incomplete).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels.structure import grid_scan
    >>> A = linsolve.problems.poisson((3, 4))
    >>> offsets = np.zeros(3, np.int64); bits = np.zeros(12, np.uint8)
    >>> diag = np.zeros(12); border = np.zeros(12)
    >>> grid_scan(A.indptr, A.indices, A.data, 12, offsets, bits, diag, border), sorted(offsets[:2].tolist())
    (2, [1, 4])
    """
    # The distances found so far live in locals (registers), and each row's results are written once.
    count = 0
    o0 = np.int64(-1)
    o1 = np.int64(-1)
    o2 = np.int64(-1)
    for i in range(m):
        row_bits = 0
        d_sum = 0.0
        b_sum = 0.0
        jj = np.uint64(indptr[i])
        end = np.uint64(indptr[i + 1])
        while jj < end:
            v = data[jj]
            j = np.int64(indices[jj])
            jj += np.uint64(1)
            if v == 0:
                continue
            d = j - i
            if d == 0:
                d_sum += v
                continue
            if j >= m:
                b_sum += v
                continue
            shift = 0
            if d < 0:
                d = -d
                shift = 1
            if d == o0:
                pass
            elif d == o1:
                shift += 2
            elif d == o2:
                shift += 4
            elif count == 0:
                o0 = d
                count = 1
            elif count == 1:
                o1 = d
                count = 2
                shift += 2
            elif count == 2:
                o2 = d
                count = 3
                shift += 4
            else:
                return -1
            row_bits |= 1 << shift
        bits[i] = row_bits
        diag[i] = d_sum
        border[i] = b_sum
    offsets[0] = o0
    offsets[1] = o1
    offsets[2] = o2
    return count


@njit(cache=True)
def checksum_words(words, seed):
    """64-bit checksum of a ``uint64`` array, continuing from ``seed``.

    Eight interleaved lanes; each word is xored in, then the lane is multiplied
    by an odd constant and rotated. Both steps are invertible, so a change in
    one word always changes its lane, and the rotation carries high bits down
    (without it, flipping the sign of every entry would cancel out pairwise).
    The lanes are mixed at the end. Not cryptographic: it detects edits, not
    adversaries.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.structure import checksum_words
    >>> w = np.arange(10, dtype=np.uint64)
    >>> v = w.copy(); v[7] += np.uint64(1)
    >>> s = w ^ np.uint64(1 << 63)                 # every sign bit flipped
    >>> h = checksum_words(w, np.uint64(1))
    >>> h == checksum_words(w.copy(), np.uint64(1)), h == checksum_words(v, np.uint64(1)), \\
    ...     h == checksum_words(s, np.uint64(1))
    (True, False, False)
    """
    prime = np.uint64(0x100000001B3)
    r, l = np.uint64(27), np.uint64(37)
    lanes = np.empty(8, np.uint64)
    for k in range(8):
        lanes[k] = (seed ^ np.uint64(0xCBF29CE484222325)) + np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)
    h0, h1, h2, h3, h4, h5, h6, h7 = lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7]
    n = words.shape[0]
    n8 = n - n % 8
    for i in range(0, n8, 8):
        h0 = (h0 ^ words[i]) * prime
        h1 = (h1 ^ words[i + 1]) * prime
        h2 = (h2 ^ words[i + 2]) * prime
        h3 = (h3 ^ words[i + 3]) * prime
        h4 = (h4 ^ words[i + 4]) * prime
        h5 = (h5 ^ words[i + 5]) * prime
        h6 = (h6 ^ words[i + 6]) * prime
        h7 = (h7 ^ words[i + 7]) * prime
        h0 = (h0 >> r) | (h0 << l)
        h1 = (h1 >> r) | (h1 << l)
        h2 = (h2 >> r) | (h2 << l)
        h3 = (h3 >> r) | (h3 << l)
        h4 = (h4 >> r) | (h4 << l)
        h5 = (h5 >> r) | (h5 << l)
        h6 = (h6 >> r) | (h6 << l)
        h7 = (h7 >> r) | (h7 << l)
    for i in range(n8, n):
        h0 = (h0 ^ words[i]) * prime
        h0 = (h0 >> r) | (h0 << l)
    h = h0
    for lane in (h1, h2, h3, h4, h5, h6, h7):
        h = (h ^ (lane >> np.uint64(29))) * prime
        h = (h ^ lane) * prime
    return h ^ np.uint64(n)


@njit(cache=True)
def unreached_rows(indptr, indices, data, m, active, rtol, seen):
    """Count the active rows of the leading ``m x m`` block not connected to a row that leaks.

    A row *leaks* when its sum over the active columns exceeds ``rtol`` times
    its diagonal (a Dirichlet face). Rows reachable from a leaking row through
    non-zero couplings between active rows get ``seen = 1``; ``seen`` must be
    zero on entry. A result of 0 proves that no closed region (a component
    with the constants in its null space) exists, at the cost of about two
    SpMVs (breadth-first search over the CSR graph).
    """
    stack = np.empty(m, np.int64)
    top = 0
    for i in range(m):
        if not active[i]:
            continue
        s = 0.0
        d = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = np.uint64(indices[p])
            if j < m and active[j]:
                s += data[p]
                if j == i:
                    d = data[p]
        if abs(s) > rtol * abs(d):
            seen[i] = 1
            stack[top] = i
            top += 1
    while top > 0:
        top -= 1
        i = stack[top]
        for p in range(indptr[i], indptr[i + 1]):
            j = np.uint64(indices[p])
            if j < m and active[j] and seen[j] == 0 and data[p] != 0:
                seen[j] = 1
                stack[top] = np.int64(j)
                top += 1
    count = 0
    for i in range(m):
        if active[i] and seen[i] == 0:
            count += 1
    return count


@njit(cache=True)
def jacobi_gershgorin_radius(indptr, indices, data, sign):
    """Largest Gershgorin radius of ``D^-1/2 (sign A) D^-1/2``: ``max_i sum_{j != i} |a_ij| / sqrt(a_ii a_jj)``.

    Below 1 the Jacobi-scaled matrix is strictly diagonally dominant and its
    condition number is at most ``(1 + radius) / (1 - radius)``. Returns
    ``inf`` when a diagonal entry of ``sign * A`` is not positive.
    """
    n = indptr.shape[0] - 1
    inv_sqrt = np.empty(n)
    for i in range(n):
        d = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            if np.uint64(indices[p]) == i:
                d += sign * data[p]
        if not d > 0:
            return np.inf
        inv_sqrt[i] = 1.0 / np.sqrt(d)
    worst = 0.0
    for i in range(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = np.uint64(indices[p])
            if j != i:
                s += abs(data[p]) * inv_sqrt[j]
        s *= inv_sqrt[i]
        if s > worst:
            worst = s
    return worst
