"""Damage an output on purpose (for docs/cli.md's `hfenc verify` example): flip the sign of one
number of faq-v2.npy, in place, as a stray write would."""

import numpy as np

array = np.load("faq-v2.npy", mmap_mode="r+")
array[3, 7] = -array[3, 7]
array.flush()
print("flipped row 3, column 7 of faq-v2.npy")
