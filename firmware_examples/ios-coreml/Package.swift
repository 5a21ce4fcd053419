// swift-tools-version:5.10
// Runs an edgeslm Core ML bundle (model.mlpackage + tokenizer.json + manifest.json) with the
// KV cache as Core ML state. Library for an iOS/macOS app, plus a macOS command-line runner.
import PackageDescription

let package = Package(
    name: "EdgeSLMCoreML",
    platforms: [.macOS(.v15), .iOS(.v18)],  // Core ML states (MLState) need macOS 15 / iOS 18
    products: [
        .library(name: "EdgeSLMCoreML", targets: ["EdgeSLMCoreML"]),
        .executable(name: "edgeslm-coreml-run", targets: ["edgeslm-coreml-run"]),
    ],
    dependencies: [
        // Tokenizers reads the bundle's tokenizer.json (byte-level BPE) and applies chat templates.
        .package(url: "https://github.com/huggingface/swift-transformers", from: "1.0.0"),
    ],
    targets: [
        .target(name: "EdgeSLMCoreML", dependencies: [.product(name: "Tokenizers", package: "swift-transformers")]),
        .executableTarget(name: "edgeslm-coreml-run", dependencies: ["EdgeSLMCoreML"]),
    ]
)
