"""Theoretical occupancy on an H200 (compute capability 9.0): how many blocks of a kernel
an SM holds at once, from its registers per thread, static shared memory and block size,
following the arithmetic of CUDA's occupancy calculator (cuda_occupancy.h). On the GPU,
cudaOccupancyMaxActiveBlocksPerMultiprocessor gives the same figure from the driver.
"""
from dataclasses import dataclass

# The H200 (SXM): 132 SMs; NVIDIA's datasheet: 67 TFLOP/s FP32 (non-tensor), 4.8 TB/s HBM3e.
# A device-to-device copy measured about 4.3 TB/s on this workplace's H200s
# (/work/.library/device/KINDS.md); the datasheet figures are the ceilings used here.
H200 = dict(name="H200", sms=132, fp32_flops=67e12, hbm_bytes_per_s=4.8e12)

# sm_90 limits (CUDA C Programming Guide, "Compute capabilities"; the occupancy calculator).
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REGS_PER_SM = 65536
SUB_PARTITIONS = 4             # registers are allocated per quarter of the SM
REG_ALLOC_UNIT = 256           # registers, per warp
MAX_REGS_PER_THREAD = 255
SMEM_PER_SM = 228 * 1024       # the largest shared-memory carve-out
SMEM_PER_BLOCK_RESERVED = 1024  # the runtime's own shared memory per block (cc 8.0+)
SMEM_ALLOC_UNIT = 128
WARP = 32


def _round_up(x, unit):
    return -(-x // unit) * unit


@dataclass(frozen=True)
class Occupancy:
    blocks: int          # resident blocks per SM
    limit: str           # what bounds them: warps | blocks | registers | shared memory
    warps_per_block: int

    @property
    def fraction(self):
        """Resident warps over the SM's 64."""
        return self.blocks * self.warps_per_block / MAX_WARPS_PER_SM


def occupancy(threads, registers, smem):
    """Occupancy of blocks of `threads` threads using `registers` per thread and `smem`
    bytes of static shared memory; blocks 0 when one block does not fit at all."""
    warps = -(-threads // WARP)
    by = {"warps": MAX_WARPS_PER_SM // warps, "blocks": MAX_BLOCKS_PER_SM}
    if registers:
        if registers > MAX_REGS_PER_THREAD:
            return Occupancy(0, "registers", warps)
        per_warp = _round_up(registers * WARP, REG_ALLOC_UNIT)
        # Registers are allocated per quarter of the SM, in whole warps: the SM holds
        # 4 x (a quarter's registers // one warp's) warps (cudaOccMaxBlocksPerSMRegsLimit).
        warps_per_quarter = (REGS_PER_SM // SUB_PARTITIONS) // per_warp
        by["registers"] = warps_per_quarter * SUB_PARTITIONS // warps
    per_block = _round_up(smem + SMEM_PER_BLOCK_RESERVED, SMEM_ALLOC_UNIT)
    by["shared memory"] = SMEM_PER_SM // per_block
    limit = min(by, key=lambda k: (by[k], k != "warps"))
    return Occupancy(by[limit], limit, warps)


def waves(blocks, resident_per_sm, sms=H200["sms"]):
    """Blocks over what the GPU holds at once: below 1, part of the GPU idles."""
    return blocks / (resident_per_sm * sms) if resident_per_sm else None
