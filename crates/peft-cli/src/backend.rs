//! The only place that names backends: `--backend` to a Burn [`Device`].

use anyhow::{bail, Result};
use burn::tensor::{Device, FloatDType};

/// The compute backend a command runs on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA if built in and a GPU is present, else a real GPU through WGPU, else the CPU.
    Auto,
    /// CPU, ndarray (Burn's reference CPU backend).
    Ndarray,
    /// CPU, flex (Burn's fast pure-Rust CPU backend).
    Flex,
    /// GPU through WGPU (Vulkan, Metal, DX12); also a CPU Vulkan driver such as lavapipe.
    Wgpu,
    /// NVIDIA GPU through CUDA.
    Cuda,
}

/// A device and the words that tell the user what was picked.
pub struct SelectedDevice {
    /// The device.
    pub device: Device,
    /// E.g. "flex (CPU)".
    pub description: String,
}

impl SelectedDevice {
    /// Refuses, naming the backend, a float type it cannot compute in (`--dtype`).
    pub fn check_dtype(&self, dtype: FloatDType) -> Result<()> {
        if dtype == FloatDType::F32 || self.device.supports_dtype(dtype) {
            return Ok(());
        }
        bail!(
            "{} does not compute in {}; use --dtype f32 there, or a backend that does (flex, \
             cuda)",
            self.description,
            format!("{dtype:?}").to_lowercase()
        )
    }
}

/// The device for `choice`; an error says how to get a backend that is missing. The choice
/// also becomes Burn's default device, so that nothing Burn creates on its own (an optimizer
/// state read back for `--resume`) starts another backend.
pub fn select(choice: BackendChoice) -> Result<SelectedDevice> {
    let (selected, name) = match choice {
        BackendChoice::Auto => auto()?,
        BackendChoice::Ndarray => (ndarray()?, "ndarray"),
        BackendChoice::Flex => (flex()?, "flex"),
        BackendChoice::Wgpu => (wgpu()?, "wgpu"),
        BackendChoice::Cuda => (cuda()?, "cuda"),
    };
    // Read by `Device::default()` in burn-dispatch. Set while the process has no other
    // thread that reads the environment (edition 2021: `set_var` is not `unsafe` here).
    std::env::set_var("BURN_DEVICE", name);
    Ok(selected)
}

#[cfg(not(all(
    feature = "ndarray",
    feature = "flex",
    feature = "wgpu",
    feature = "cuda"
)))]
fn not_built(name: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "backend `{name}` was not compiled into this binary; rebuild with \
         `cargo build --release -p peft-cli --features {feature}`"
    )
}

/// CUDA, else a GPU through WGPU, else the CPU; the description says why, in one line.
fn auto() -> Result<(SelectedDevice, &'static str)> {
    if let Ok(selected) = cuda() {
        return Ok((selected, "cuda"));
    }
    if let Some(selected) = wgpu_gpu() {
        return Ok((selected, "wgpu"));
    }
    let why = if cfg!(feature = "cuda") {
        "auto: no CUDA GPU and no GPU through WGPU"
    } else {
        "auto: no GPU through WGPU, and CUDA is not built in"
    };
    let (mut selected, name) = match flex() {
        Ok(selected) => (selected, "flex"),
        Err(_) => match ndarray() {
            Ok(selected) => (selected, "ndarray"),
            Err(_) => (wgpu()?, "wgpu"),
        },
    };
    selected.description = format!("{} ({why})", selected.description);
    Ok((selected, name))
}

#[cfg(feature = "ndarray")]
fn ndarray() -> Result<SelectedDevice> {
    #[allow(deprecated)]
    // Burn marks ndarray deprecated in favour of flex; it stays as a reference.
    let device = Device::ndarray();
    Ok(SelectedDevice {
        device,
        description: "ndarray (CPU)".into(),
    })
}

#[cfg(not(feature = "ndarray"))]
fn ndarray() -> Result<SelectedDevice> {
    Err(not_built("ndarray", "ndarray"))
}

#[cfg(feature = "flex")]
fn flex() -> Result<SelectedDevice> {
    Ok(SelectedDevice {
        device: Device::flex(),
        description: "flex (CPU)".into(),
    })
}

#[cfg(not(feature = "flex"))]
fn flex() -> Result<SelectedDevice> {
    Err(not_built("flex", "flex"))
}

/// Lists WGPU adapters without letting a missing driver abort the process or print.
#[cfg(feature = "wgpu")]
fn wgpu_devices() -> Vec<(Device, String, bool)> {
    use burn::tensor::DeviceType;
    quietly(|| {
        Device::enumerate(DeviceType::Wgpu)
            .into_vec()
            .into_iter()
            .map(|d| {
                let identity = d.identity();
                let name = identity
                    .as_ref()
                    .map_or_else(|| "unknown adapter".into(), |i| i.name.clone());
                let is_gpu = identity.is_some_and(|i| i.physical.is_some());
                (d, name, is_gpu)
            })
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(feature = "wgpu")]
fn wgpu_gpu() -> Option<SelectedDevice> {
    wgpu_devices()
        .into_iter()
        .find(|(_, _, is_gpu)| *is_gpu)
        .map(|(device, name, _)| SelectedDevice {
            device,
            description: format!("wgpu ({name})"),
        })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_gpu() -> Option<SelectedDevice> {
    None
}

#[cfg(feature = "wgpu")]
fn wgpu() -> Result<SelectedDevice> {
    let devices = wgpu_devices();
    let Some((device, name, _)) = devices
        .iter()
        .find(|(_, _, is_gpu)| *is_gpu)
        .or(devices.first())
        .cloned()
    else {
        bail!(
            "backend `wgpu` found no adapter: install a Vulkan driver (your GPU vendor's, or \
             Mesa's CPU driver: `apt-get install mesa-vulkan-drivers libvulkan1`), or use \
             --backend flex"
        );
    };
    Ok(SelectedDevice {
        device,
        description: format!("wgpu ({name})"),
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu() -> Result<SelectedDevice> {
    Err(not_built("wgpu", "wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<SelectedDevice> {
    use burn::tensor::DeviceType;
    let devices = quietly(|| Device::enumerate(DeviceType::Cuda).into_vec()).unwrap_or_default();
    let Some(device) = devices.into_iter().next() else {
        bail!("backend `cuda` found no GPU: check the NVIDIA driver (`nvidia-smi`), or use --backend wgpu or flex");
    };
    let name = quietly(|| device.identity())
        .flatten()
        .map_or_else(|| "GPU 0".to_string(), |i| i.name);
    Ok(SelectedDevice {
        device,
        description: format!("cuda ({name})"),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<SelectedDevice> {
    Err(not_built("cuda", "cuda (or cuda-nvrtc)"))
}

/// Runs a device probe that may panic inside a driver, printing neither the panic nor what
/// the driver writes to stderr.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn quietly<T>(probe: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = stderr_silenced(|| std::panic::catch_unwind(probe).ok());
    std::panic::set_hook(hook);
    result
}

/// Runs `f` with file descriptor 2 pointed at /dev/null: Vulkan loaders and drivers print
/// probe failures ("XDG_RUNTIME_DIR is invalid") straight to it, past Rust's stderr.
#[cfg(all(unix, any(feature = "wgpu", feature = "cuda")))]
fn stderr_silenced<T>(f: impl FnOnce() -> T) -> T {
    use std::os::fd::AsRawFd;
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return f();
    };
    // SAFETY: plain descriptor calls on descriptors this function owns or restores; fd 2 is
    // put back before returning.
    let saved = unsafe { libc::dup(2) };
    if saved < 0 || unsafe { libc::dup2(null.as_raw_fd(), 2) } < 0 {
        return f();
    }
    let out = f();
    // SAFETY: `saved` is the duplicate made above.
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
    }
    out
}

#[cfg(all(not(unix), any(feature = "wgpu", feature = "cuda")))]
fn stderr_silenced<T>(f: impl FnOnce() -> T) -> T {
    f()
}
