//! Training devices: the CPU (burn-ndarray, float64) or, in a binary built
//! with the `cuda` feature, an NVIDIA GPU (burn-cuda, float32).
//!
//! Exact evaluation, the baselines and the written categories are always
//! computed on the host in float64, whatever the training device.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A training device, as given by `--device` or the pipeline's `device`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA GPU number N (from 0).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`; use `cpu`, `cuda` or `cuda:N` (N = GPU number from 0)")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The CUDA training backend: burn-cuda in float32 with autodiff (burn-cuda
/// 0.21 has no float64 kernels).
// NOTE: this backend compiles in CI but has not yet run on a GPU in the
// project's tests, so kernels the models use (cumsum, mask_where, log1p)
// are unverified on it until `benches/gpu.rs` has run on a GPU machine.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn_cuda::Cuda<f32, i32>>;

/// Checks that `choice` can be used by this binary on this machine: the
/// `cuda` feature is built in and the GPU runs a first tensor operation.
pub fn check(choice: DeviceChoice) -> Result<()> {
    match choice {
        DeviceChoice::Cpu => Ok(()),
        DeviceChoice::Cuda(_) if !CUDA_BUILT => Err(Error::Config(format!(
            "device {choice}: this gato was built without CUDA support; rebuild it with \
             `cargo build --release --features cuda`, or use `--device cpu`"
        ))),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(index) => probe_cuda(index),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Ok(()),
    }
}

/// Runs one small operation on GPU `index`. burn-cuda panics when the
/// driver, NVRTC or the GPU is missing; the panic becomes an error here.
#[cfg(feature = "cuda")]
fn probe_cuda(index: usize) -> Result<()> {
    use burn::tensor::Tensor;
    let device = burn_cuda::CudaDevice::new(index);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(|| {
        let t = Tensor::<CudaBackend, 1>::ones([4], &device);
        t.sum().into_data().iter::<f64>().next()
    });
    std::panic::set_hook(previous);
    match outcome {
        Ok(Some(sum)) if sum == 4.0 => Ok(()),
        Ok(other) => Err(Error::Config(format!(
            "device cuda:{index} returned {other:?} for a test sum of four ones; the GPU or driver is not usable"
        ))),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            Err(Error::Config(format!(
                "device cuda:{index}: no usable CUDA GPU ({message}); check the NVIDIA driver with \
                 `nvidia-smi` and that libnvrtc is installed, or use `--device cpu`"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert_eq!(DeviceChoice::Cuda(3).to_string(), "cuda:3");
        let err = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert_eq!(
            err,
            "unknown device `gpu`; use `cpu`, `cuda` or `cuda:N` (N = GPU number from 0)"
        );
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = check(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert_eq!(
            err,
            "device cuda:0: this gato was built without CUDA support; rebuild it with \
             `cargo build --release --features cuda`, or use `--device cpu`"
        );
        assert!(check(DeviceChoice::Cpu).is_ok());
    }
}
