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

__all__ = ["grid_scan", "checksum_words", "bandwidth", "unreached_rows", "jacobi_gershgorin_radius", "gershgorin_interval",
           "compact_grid_coordinates",
           "unit_couplings", "component_boxes", "all_distinct", "coupling_scan", "told_axes",
           "MAX_OFFSETS"]

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


@njit(cache=True)
def bandwidth(indptr, indices, data, limit):
    """``max |j - i|`` over the non-zero entries, or the first distance above ``limit`` met.

    Stopping at once past ``limit`` makes the question "is A banded?" cost
    nothing on a 2D/3D grid matrix (its first row reaches a whole grid line
    away).
    """
    n = indptr.shape[0] - 1
    worst = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            if data[p] != 0:
                d = abs(np.int64(indices[p]) - i)
                if d > worst:
                    worst = d
                    if worst > limit:
                        return worst
    return worst


@njit(cache=True)
def gershgorin_interval(indptr, indices, data, sign):
    """``(min_i (a_ii - r_i), max_i (a_ii + r_i))`` of ``sign * A``, ``r_i = sum_{j != i} |a_ij|``.

    Bounds the spectrum of a symmetric ``A`` itself (not Jacobi-scaled): what
    plain CG, which sees ``A`` unscaled, converges by.
    """
    n = indptr.shape[0] - 1
    lo = np.inf
    hi = -np.inf
    for i in range(n):
        d = 0.0
        r = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] == i:
                d += sign * data[p]
            else:
                r += abs(data[p])
        lo = min(lo, d - r)
        hi = max(hi, d + r)
    return lo, hi


@njit(cache=True)
def _fits(indptr, indices, data, v, c, c0, c1, c2, pos, component):
    """Whether row ``v`` at ``(c0, c1, c2)`` sits one unit from each placed neighbour, on the side its number says."""
    for t in range(indptr[v], indptr[v + 1]):
        u = np.int64(indices[t])
        if u == v or data[t] == 0 or component[u] != c:
            continue
        d0 = pos[u, 0] - c0
        d1 = pos[u, 1] - c1
        d2 = pos[u, 2] - c2
        if abs(d0) + abs(d1) + abs(d2) != 1 or d0 + d1 + d2 != (1 if u > v else -1) \
                or (d2 != 0 and abs(u - v) != 1):
            return False
    return True


@njit(cache=True)
def _place(indptr, indices, data, p, v, axis, c, pos, component):
    """Put row ``v`` one unit from ``p`` along ``axis`` (on the side its number says) if that fits; whether it did."""
    step = 1 if v > p else -1
    c0 = pos[p, 0] + (step if axis == 0 else 0)
    c1 = pos[p, 1] + (step if axis == 1 else 0)
    c2 = pos[p, 2] + (step if axis == 2 else 0)
    if not _fits(indptr, indices, data, v, c, c0, c1, c2, pos, component):
        return False
    pos[v, 0] = c0
    pos[v, 1] = c1
    pos[v, 2] = c2
    component[v] = c
    return True


@njit(cache=True)
def compact_grid_coordinates(indptr, indices, data, labels, untold, dims, z_threshold, pos, component):
    """Grid coordinates of the rows of a stencil matrix numbered over some cells of a grid, in grid order.

    Codes that number only their fluid cells keep the order of a C-order
    (or any fixed-axis-order) numbering of the grid, so a neighbour along an
    axis in its positive direction always has the larger row number, and a
    neighbour along the fastest axis the next one. ``labels[t]`` is the axis
    of coupling ``t`` where the numbering tells it (2: the fastest, for
    consecutive rows; 1 / 0 when a row has two couplings to later rows, or
    to earlier ones, away from the next), -1 where it does not (``untold``
    entries, as :func:`told_axes` counts them). Each component of the
    coupling graph is walked from its lowest row, placed at the origin,
    along the told couplings first; an untold one is taken only when none is
    left, along the first axis (the middle one, or the slowest first when
    ``|j - i| > z_threshold > 0``) that keeps the new row one unit from every
    placed neighbour. ``pos`` (``(n, 3)``, axis 2 the fastest) and
    ``component`` (-1 for rows without couplings) are written; returns the
    number of components, or -1 at a contradiction. Overlaps of rows are
    left for the caller to verify.
    """
    n = indptr.shape[0] - 1
    queue = np.empty(n, dtype=np.int64)
    pend_row = np.empty(max(untold, 1), dtype=np.int64)  # each untold coupling waits at most once
    pend_entry = np.empty(max(untold, 1), dtype=np.int64)
    ncomp = 0
    for root in range(n):
        if component[root] >= 0:
            continue
        coupled = False
        for t in range(indptr[root], indptr[root + 1]):
            if np.uint64(indices[t]) != np.uint64(root) and data[t] != 0:
                coupled = True
                break
        if not coupled:
            continue
        c = ncomp
        ncomp += 1
        component[root] = c
        pos[root, 0] = 0
        pos[root, 1] = 0
        pos[root, 2] = 0
        head = 0
        tail = 1
        queue[0] = root
        npend = 0
        while True:
            while head < tail:
                p = queue[head]
                head += 1
                for t in range(indptr[p], indptr[p + 1]):
                    v = np.int64(indices[t])
                    if v == p or data[t] == 0 or component[v] >= 0:
                        continue
                    if labels[t] < 0:
                        pend_row[npend] = p
                        pend_entry[npend] = t
                        npend += 1
                        continue
                    if not _place(indptr, indices, data, p, v, labels[t], c, pos, component):
                        return -1
                    queue[tail] = v
                    tail += 1
            placed = False
            while npend > 0 and not placed:
                npend -= 1
                p = pend_row[npend]
                t = pend_entry[npend]
                v = np.int64(indices[t])
                if component[v] >= 0:
                    continue
                gap = v - p if v > p else p - v
                for k in range(2):
                    if dims == 2:
                        axis = 1
                        if k == 1:
                            break
                    elif z_threshold > 0 and gap > z_threshold:
                        axis = k
                    else:
                        axis = 1 - k
                    if _place(indptr, indices, data, p, v, axis, c, pos, component):
                        queue[tail] = v
                        tail += 1
                        placed = True
                        break
                if not placed:
                    return -1
            if not placed:
                break
    return ncomp


@njit(cache=True)
def unit_couplings(indptr, indices, data, pos, component):
    """Whether every coupling of :func:`compact_grid_coordinates`'s layout joins unit neighbours of one region."""
    n = indptr.shape[0] - 1
    for i in range(n):
        for t in range(indptr[i], indptr[i + 1]):
            j = np.int64(indices[t])
            if j == i or data[t] == 0:
                continue
            if component[i] != component[j] or component[i] < 0:
                return False
            if abs(pos[j, 0] - pos[i, 0]) + abs(pos[j, 1] - pos[i, 1]) + abs(pos[j, 2] - pos[i, 2]) != 1:
                return False
    return True


@njit(cache=True)
def component_boxes(pos, component, lo, hi):
    """Per component ``c``: ``lo[c]`` / ``hi[c]``, the smallest / largest coordinates of its rows."""
    for i in range(pos.shape[0]):
        c = component[i]
        if c < 0:
            continue
        for a in range(3):
            if pos[i, a] < lo[c, a]:
                lo[c, a] = pos[i, a]
            if pos[i, a] > hi[c, a]:
                hi[c, a] = pos[i, a]


@njit(cache=True)
def all_distinct(cells, size):
    """Whether the indices in ``cells`` (each in ``[0, size)``) are pairwise different."""
    seen = np.zeros(size, dtype=np.uint8)
    for k in range(cells.shape[0]):
        c = cells[k]
        if seen[c]:
            return False
        seen[c] = 1
    return True


@njit(cache=True)
def coupling_scan(indptr, indices, data):
    """``(most couplings of a row, couplings, couplings between consecutive rows)`` (nonzero off-diagonals)."""
    n = indptr.shape[0] - 1
    most = 0
    total = 0
    consecutive = 0
    for i in range(n):
        count = 0
        for t in range(indptr[i], indptr[i + 1]):
            j = np.int64(indices[t])
            if j == i or data[t] == 0:
                continue
            count += 1
            if j == i + 1 or j == i - 1:
                consecutive += 1
        total += count
        if count > most:
            most = count
    return most, total, consecutive


@njit(cache=True)
def told_axes(indptr, indices, data, dims, labels):
    """The axes :func:`compact_grid_coordinates` is told (``labels`` per stored entry, -1 where untold).

    Consecutive rows couple along the fastest axis (2); in 2D every other
    coupling runs along axis 1; in 3D a row with two couplings to later rows
    (or two to earlier ones) away from the next has the nearer along the
    middle axis (1) and the farther along the slowest (0). Returns
    ``(largest middle-axis gap, smallest slowest-axis gap, couplings left
    untold)`` (gaps ``0`` when none seen).
    """
    n = indptr.shape[0] - 1
    mid_max = 0
    slow_min = 0
    untold = 0
    for i in range(n):
        near_after = -1
        far_after = -1
        count_after = 0
        near_before = -1
        far_before = -1
        count_before = 0
        for t in range(indptr[i], indptr[i + 1]):
            labels[t] = -1
            j = np.int64(indices[t])
            if j == i or data[t] == 0:
                continue
            if j == i + 1 or j == i - 1:
                labels[t] = 2
            elif dims == 2:
                labels[t] = 1
            elif j > i:
                count_after += 1
                if near_after < 0 or j < indices[near_after]:
                    far_after = near_after
                    near_after = t
                else:
                    far_after = t
            else:
                count_before += 1
                if near_before < 0 or j > indices[near_before]:
                    far_before = near_before
                    near_before = t
                else:
                    far_before = t
        if count_after == 2:
            labels[near_after] = 1
            labels[far_after] = 0
            gap_mid = np.int64(indices[near_after]) - i
            gap_slow = np.int64(indices[far_after]) - i
            if gap_mid > mid_max:
                mid_max = gap_mid
            if slow_min == 0 or gap_slow < slow_min:
                slow_min = gap_slow
        if count_before == 2:
            labels[near_before] = 1
            labels[far_before] = 0
        if count_after != 2:
            untold += count_after
        if count_before != 2:
            untold += count_before
    return mid_max, slow_min, untold
