"""Toy detector simulators (seeded, vectorised)."""

from recoil_jax.sim.electron_recoil import ElectronRecoils
from recoil_jax.sim.electron_recoil import simulate_electron_recoils
from recoil_jax.sim.gas import csda_range_mm
from recoil_jax.sim.gas import dedx_kev_per_mm
from recoil_jax.sim.gas import elastic_mfp_mm
from recoil_jax.sim.gas import GasComponent
from recoil_jax.sim.gas import GasMixture
from recoil_jax.sim.gas import HE_CF4_60_40
from recoil_jax.sim.gas import HE_CO2_70_30
from recoil_jax.sim.gas import screening_parameter
from recoil_jax.sim.gas import stopping_power_mev_cm2_g
from recoil_jax.sim.gas import transport_mfp_mm

__all__ = [
    "ElectronRecoils",
    "GasComponent",
    "GasMixture",
    "HE_CF4_60_40",
    "HE_CO2_70_30",
    "csda_range_mm",
    "dedx_kev_per_mm",
    "elastic_mfp_mm",
    "screening_parameter",
    "simulate_electron_recoils",
    "stopping_power_mev_cm2_g",
    "transport_mfp_mm",
]
