import Foundation
import Tokenizers

/// Greedy generation with an edgeslm Core ML bundle: tokenizer from the bundle's tokenizer.json,
/// the stateful model, stop on the bundle's end-of-turn ids.
public final class Runner {
    public let bundle: EdgeSLMBundle
    public let model: StatefulLanguageModel
    public let tokenizer: any Tokenizer

    public init(bundleURL: URL) async throws {
        bundle = try EdgeSLMBundle(url: bundleURL)
        model = try await StatefulLanguageModel(package: bundle.modelURL, contextLength: bundle.contextLength)
        tokenizer = try await AutoTokenizer.from(modelFolder: try Self.tokenizerFolder(bundle))
    }

    /// Prompt ids exactly as edgeslm encodes them: no implicit specials, BOS only if the bundle says so.
    public func encode(_ prompt: String, chat: Bool) throws -> [Int] {
        if chat {
            return try tokenizer.applyChatTemplate(messages: [["role": "user", "content": prompt]])
        }
        var ids = tokenizer.encode(text: prompt, addSpecialTokens: false)
        if bundle.addBos, let bos = bundle.bosTokenId { ids.insert(bos, at: 0) }
        return ids
    }

    /// Streams decoded text pieces to `onText`; returns the generated token ids.
    public func generate(_ prompt: String, chat: Bool = false, maxNewTokens: Int = 128,
                         onText: (String) -> Void) async throws -> [Int] {
        model.reset()
        let promptIds = try encode(prompt, chat: chat)
        var logits = try await model(promptIds)
        var out: [Int] = []
        var shown = ""
        while out.count < maxNewTokens {
            let next = argmax(logits)
            if bundle.eosTokenIds.contains(next) { break }
            out.append(next)
            let text = tokenizer.decode(tokens: out, skipSpecialTokens: true)
            if text.count > shown.count, !text.hasSuffix("\u{FFFD}") {  // wait for whole UTF-8 characters
                onText(String(text.dropFirst(shown.count)))
                shown = text
            }
            if model.position >= bundle.contextLength { break }
            logits = try await model([next])
        }
        return out
    }

    /// swift-transformers reads tokenizer.json + tokenizer_config.json; the bundle carries the
    /// former and edgeslm_tokenizer.json, so write the small config it expects next to a copy.
    static func tokenizerFolder(_ bundle: EdgeSLMBundle) throws -> URL {
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("edgeslm-tokenizer-\(UUID().uuidString)")
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        let tokenizerJSON = bundle.url.appendingPathComponent("tokenizer.json")
        try fm.copyItem(at: tokenizerJSON, to: dir.appendingPathComponent("tokenizer.json"))
        let added = (try EdgeSLMBundle.json(tokenizerJSON)["added_tokens"] as? [[String: Any]]) ?? []
        let content = Dictionary(uniqueKeysWithValues: added.compactMap { t -> (Int, String)? in
            guard let id = t["id"] as? Int, let c = t["content"] as? String else { return nil }
            return (id, c)
        })
        var config: [String: Any] = ["tokenizer_class": "GPT2Tokenizer", "add_bos_token": bundle.addBos,
                                     "add_prefix_space": false]
        if let bos = bundle.bosTokenId, let c = content[bos] { config["bos_token"] = c }
        if let eos = bundle.eosTokenIds.first, let c = content[eos] { config["eos_token"] = c }
        if let t = bundle.chatTemplate { config["chat_template"] = t }
        let data = try JSONSerialization.data(withJSONObject: config)
        try data.write(to: dir.appendingPathComponent("tokenizer_config.json"))
        return dir
    }
}
