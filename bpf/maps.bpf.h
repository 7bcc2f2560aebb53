/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map and histogram helpers shared by the probe families (kernel side only). */
#ifndef PODSIGHT_MAPS_BPF_H
#define PODSIGHT_MAPS_BPF_H

/* The entry for key, created from zero if absent.  NULL only when the map is
 * full: the agent sees that in podsight_bpf_map_entries.  Losing a creation
 * race to another CPU is fine: the second lookup finds its entry. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v)
		return v;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/* Histogram slot of v: 0 for 0, else floor(log2(v)) + 1, so slot s holds
 * [2^(s-1), 2^s).  Branch-free, no loop for the verifier to walk. */
static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r, shift;

	if (!v)
		return 0;
	r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	r += 1;
	return r < PODSIGHT_HIST_SLOTS ? r : PODSIGHT_HIST_SLOTS - 1;
}

/* One value into a log2 histogram (struct hist, bpf/podsight.h). */
static __always_inline void hist_add(struct hist *h, __u64 value)
{
	__u32 slot = log2_slot(value);

	/* clang folds a plain mask into log2_slot()'s clamp and the verifier
	 * loses the bound; the barrier keeps the mask it can see. */
	barrier_var(slot);
	slot &= PODSIGHT_HIST_SLOTS - 1;
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum, value);
}

#endif /* PODSIGHT_MAPS_BPF_H */
