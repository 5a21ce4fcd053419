import CoreML
import Foundation

/// The exported model: `input_ids` int32 (1, S) and `causal_mask` fp16 (1, 1, S, P+S) in,
/// `logits` (1, V) out; the KV cache lives in the model's `key_cache`/`value_cache` states,
/// written in place at positions P..P+S-1 on every prediction.
public final class StatefulLanguageModel {
    public let model: MLModel
    public let contextLength: Int
    public private(set) var position = 0
    private var state: MLState

    /// Compiles the .mlpackage (first use; an Xcode app can ship the compiled .mlmodelc instead).
    public init(package: URL, contextLength: Int, computeUnits: MLComputeUnits = .all) async throws {
        let compiled = try await MLModel.compileModel(at: package)
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        self.model = try MLModel(contentsOf: compiled, configuration: config)
        self.contextLength = contextLength
        self.state = model.makeState()
    }

    /// Forget the cache: a fresh state (its contents are never read past `position`).
    public func reset() {
        state = model.makeState()
        position = 0
    }

    /// Append `tokens` to the cache; return the next-token logits after the last one.
    public func callAsFunction(_ tokens: [Int]) async throws -> [Float] {
        let s = tokens.count, end = position + s
        guard s > 0, end <= contextLength else {
            throw RunnerError.model("context overflow: \(position) cached + \(s) new > \(contextLength)")
        }
        let ids = try MLMultiArray(shape: [1, NSNumber(value: s)], dataType: .int32)
        let idp = ids.dataPointer.bindMemory(to: Int32.self, capacity: s)
        for (i, t) in tokens.enumerated() { idp[i] = Int32(t) }

        // (1, 1, S, E): 0 where query i (at position P + i) may attend key j, i.e. j <= P + i; -inf elsewhere.
        let mask = try MLMultiArray(shape: [1, 1, NSNumber(value: s), NSNumber(value: end)], dataType: .float16)
        let mp = mask.dataPointer.bindMemory(to: UInt16.self, capacity: s * end)
        let zero: UInt16 = 0x0000, minusInf: UInt16 = 0xFC00  // IEEE fp16 bit patterns
        for i in 0..<s {
            for j in 0..<end { mp[i * end + j] = j <= position + i ? zero : minusInf }
        }
        let input = try MLDictionaryFeatureProvider(dictionary: [
            "input_ids": MLFeatureValue(multiArray: ids),
            "causal_mask": MLFeatureValue(multiArray: mask),
        ])
        let out = try await model.prediction(from: input, using: state)
        position = end
        guard let logits = out.featureValue(for: "logits")?.multiArrayValue else {
            throw RunnerError.model("the model returned no 'logits'")
        }
        return Self.floats(logits)
    }

    static func floats(_ a: MLMultiArray) -> [Float] {
        let n = a.count
        switch a.dataType {
        case .float32:
            let p = a.dataPointer.bindMemory(to: Float.self, capacity: n)
            return Array(UnsafeBufferPointer(start: p, count: n))
        #if arch(arm64)
        case .float16:
            let p = a.dataPointer.bindMemory(to: Float16.self, capacity: n)
            return (0..<n).map { Float(p[$0]) }
        #endif
        default:
            return (0..<n).map { a[$0].floatValue }
        }
    }
}

public func argmax(_ xs: [Float]) -> Int {
    var best = 0
    for i in 1..<xs.count where xs[i] > xs[best] { best = i }
    return best
}
