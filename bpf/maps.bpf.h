/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map helpers shared by the probe families (kernel side only). */
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

#endif /* PODSIGHT_MAPS_BPF_H */
