//! The operator-library mechanism Neuron artifacts depend on, proven with a real custom
//! operator: a C++ library built here against the pinned torch, a module traced in Python that
//! calls it, and the loader's Neuron code path with that library standing in for
//! libtorchneuron.so. One test, in its own process: a loaded library cannot be unloaded.

use blipserve_model::device::{self, Device};
use blipserve_testkit::*;
use tch::Tensor;

#[test]
fn custom_operator_library_is_required_and_then_used() {
    let dir = tempfile::tempdir().unwrap();
    let built = op_fixtures(dir.path(), &[]);
    let module = std::path::PathBuf::from(built["module"].as_str().unwrap());
    let library = std::path::PathBuf::from(built["library"].as_str().unwrap());
    let operator = built["operator"].as_str().unwrap();

    // Without the library: a clear error naming the operator and the remedy.
    let err = device::load_module(&module, Device::Neuron).unwrap_err().to_string();
    assert!(err.contains(&format!("`{operator}`")), "{err}");
    assert!(err.contains("--op-library"), "{err}");

    // Device neuron with no libtorchneuron.so anywhere: refused before any module is loaded.
    if device::find_neuron_library(None).is_err() {
        let err = device::load_operator_libraries(Device::Neuron, None, &[]).unwrap_err().to_string();
        assert!(err.contains("libtorchneuron.so") && err.contains("--neuron-lib"), "{err}");
    } else {
        skip("(one check only) libtorchneuron.so is on this host, so `--device neuron` without it cannot be refused");
    }

    // The Neuron path, with the custom library given as the Neuron operator library.
    let loaded = device::load_operator_libraries(Device::Neuron, Some(&library), &[]).expect("load op library");
    assert_eq!(loaded, vec![library.canonicalize().unwrap()]);
    let m = device::load_module(&module, Device::Neuron).expect("module loads once its operator exists");
    let input: Vec<f32> = serde_json::from_value(built["input"].clone()).unwrap();
    let shape: Vec<i64> = serde_json::from_value(built["shape"].clone()).unwrap();
    let expected: Vec<f32> = serde_json::from_value(built["expected"].clone()).unwrap();
    let out = m.forward_ts(&[Tensor::from_slice(&input).view(shape.as_slice())]).expect("forward");
    let got: Vec<f32> = Vec::try_from(out.flatten(0, -1)).unwrap();
    assert_eq!(got, expected);

    // Loading is idempotent, and the generic --op-library route reaches the same library.
    assert_eq!(device::load_operator_libraries(Device::Cpu, None, std::slice::from_ref(&library)).unwrap(), loaded);
}
