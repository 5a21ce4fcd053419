import Foundation

/// The parts of an edgeslm bundle's manifest.json the runner needs.
public struct EdgeSLMBundle {
    public let url: URL
    public let format: String
    public let precision: String
    public let contextLength: Int
    public let vocabSize: Int
    public let modelURL: URL
    public let bosTokenId: Int?
    public let eosTokenIds: [Int]
    public let addBos: Bool
    public let chatTemplate: String?

    public init(url: URL) throws {
        self.url = url
        let manifest = try Self.json(url.appendingPathComponent("manifest.json"))
        guard let format = manifest["format"] as? String, format == "coreml" else {
            throw RunnerError.bundle("\(url.path): not a Core ML bundle (format \(manifest["format"] ?? "?"))")
        }
        let spec = manifest["spec"] as? [String: Any] ?? [:]
        let artifacts = manifest["artifacts"] as? [String: Any] ?? [:]
        self.format = format
        self.precision = manifest["precision"] as? String ?? "?"
        self.contextLength = manifest["context_length"] as? Int ?? 2048
        self.vocabSize = spec["vocab_size"] as? Int ?? 0
        self.modelURL = url.appendingPathComponent(artifacts["model"] as? String ?? "model.mlpackage")
        // edgeslm_tokenizer.json: special-token facts, explicit (never guessed from defaults)
        let tok = try Self.json(url.appendingPathComponent("edgeslm_tokenizer.json"))
        self.bosTokenId = tok["bos_token_id"] as? Int
        self.eosTokenIds = tok["eos_token_ids"] as? [Int] ?? []
        self.addBos = tok["add_bos"] as? Bool ?? false
        self.chatTemplate = tok["chat_template"] as? String
    }

    static func json(_ url: URL) throws -> [String: Any] {
        let data = try Data(contentsOf: url)
        guard let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw RunnerError.bundle("\(url.path): not a JSON object")
        }
        return obj
    }
}

public enum RunnerError: Error, CustomStringConvertible {
    case bundle(String)
    case model(String)

    public var description: String {
        switch self {
        case .bundle(let m), .model(let m): return m
        }
    }
}
