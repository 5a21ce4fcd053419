import CryptoKit
import Foundation

/// The parts of an edgeslm bundle's manifest.json the runner needs, read the way the Python
/// reader reads them (edgeslm/bundle, docs/bundle.md): the manifest's and the tokenizer file's
/// `schema_version` checked (a newer one is refused, a tokenizer file without one is version 1),
/// and every listed file's size and sha256 checked before anything is used, with files the
/// manifest does not list refused. The signature (manifest.json.sig) is not checked here.
public struct EdgeSLMBundle {
    /// The newest manifest.json schema this reader understands (edgeslm/bundle/schema.py).
    public static let manifestSchemaVersion = 1
    /// The newest edgeslm_tokenizer.json schema this reader understands (edgeslm/tokenizer.py).
    public static let tokenizerSchemaVersion = 1
    /// Files a bundle holds that the manifest does not hash (itself and its signature).
    static let notHashed: Set<String> = ["manifest.json", "manifest.json.sig"]

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

    public init(url: URL, verifyFiles: Bool = true) throws {
        self.url = url
        let manifest = try Self.json(url.appendingPathComponent("manifest.json"))
        try Self.checkVersion(manifest["schema_version"], newest: Self.manifestSchemaVersion,
                              required: true, what: "\(url.path)/manifest.json")
        if verifyFiles {
            guard let files = manifest["files"] as? [String: Any] else {
                throw RunnerError.bundle("\(url.path)/manifest.json: missing 'files'")
            }
            try Self.verifyFiles(root: url, files: files)
        }
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
        try Self.checkVersion(tok["schema_version"], newest: Self.tokenizerSchemaVersion,
                              required: false, what: "\(url.path)/edgeslm_tokenizer.json")
        self.bosTokenId = tok["bos_token_id"] as? Int
        self.eosTokenIds = tok["eos_token_ids"] as? [Int] ?? []
        self.addBos = tok["add_bos"] as? Bool ?? false
        self.chatTemplate = tok["chat_template"] as? String
    }

    /// A missing version is version 1 where `required` is false (files written before the field).
    static func checkVersion(_ value: Any?, newest: Int, required: Bool, what: String) throws {
        guard let value = value else {
            if required { throw RunnerError.bundle("\(what): missing 'schema_version'") }
            return
        }
        // JSON true would bridge to 1: refuse booleans explicitly, as the Python reader does
        let isBool = CFGetTypeID(value as CFTypeRef) == CFBooleanGetTypeID()
        guard let version = value as? Int, !isBool, version >= 1 else {
            throw RunnerError.bundle("\(what): 'schema_version' must be a positive integer")
        }
        if version > newest {
            throw RunnerError.bundle("\(what): schema_version \(version) is newer than this runner reads "
                                     + "(\(newest)); update the runner")
        }
    }

    /// Every listed file exists with the listed size and sha256; no file is unlisted.
    static func verifyFiles(root: URL, files: [String: Any]) throws {
        for (name, value) in files.sorted(by: { $0.key < $1.key }) {
            guard let entry = value as? [String: Any], let bytes = entry["bytes"] as? Int,
                  let sha256 = entry["sha256"] as? String else {
                throw RunnerError.bundle("\(root.path): files['\(name)'] needs 'bytes' and 'sha256'")
            }
            let file = try safePath(root: root, name: name)
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: file.path),
                  let size = (attributes[.size] as? NSNumber)?.intValue else {
                throw RunnerError.bundle("\(root.path): listed file \(name) is missing")
            }
            guard size == bytes else {
                throw RunnerError.bundle("\(root.path): \(name) has \(size) bytes, the manifest says \(bytes)")
            }
            guard try sha256Hex(of: file) == sha256 else {
                throw RunnerError.bundle("\(root.path): \(name) does not match its sha256 in the manifest")
            }
        }
        // resolved on both sides: the enumerator may report /private/var for /var (macOS)
        let base = root.resolvingSymlinksInPath().path + "/"
        let walker = FileManager.default.enumerator(at: root, includingPropertiesForKeys: [.isRegularFileKey])
        while let item = walker?.nextObject() as? URL {
            guard (try? item.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true else { continue }
            let path = item.resolvingSymlinksInPath().path
            guard path.hasPrefix(base) else { throw RunnerError.bundle("\(root.path): \(item.path) lies outside the bundle") }
            let name = String(path.dropFirst(base.count))
            if files[name] == nil && !notHashed.contains(name) {
                throw RunnerError.bundle("\(root.path): \(name) is not listed in the manifest")
            }
        }
    }

    /// A listed name as a URL inside the bundle: relative, no '..', no empty or '.' parts.
    static func safePath(root: URL, name: String) throws -> URL {
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        if name.hasPrefix("/") || name.contains("\\") || parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
            throw RunnerError.bundle("\(root.path): unsafe file name in the manifest: \(name)")
        }
        return root.appendingPathComponent(name)
    }

    /// sha256 of a file, read in 1 MiB blocks (weights are hundreds of MB).
    static func sha256Hex(of url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let block = try handle.read(upToCount: 1 << 20), !block.isEmpty {
            hasher.update(data: block)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
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
