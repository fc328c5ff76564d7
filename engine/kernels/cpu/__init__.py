"""CPU kernels in C: one .c file per kernel family beside its thin ctypes binding (the .py of the
same name), shared headers for the SIMD helpers (simd.h), the packed-panel tiles (panel.h) and the
MoE driver steps (moe_driver.h). `native` compiles and caches them on first use; `autotune` picks
how the linear and attention kernels split their work between threads on this CPU (numerically
identical candidates only) and caches the choice beside the build."""
