// edgeslm-coreml-run BUNDLE [--prompt TEXT] [--chat] [-n MAX_NEW_TOKENS]
import EdgeSLMCoreML
import Foundation

var args = Array(CommandLine.arguments.dropFirst())
func option(_ names: [String]) -> String? {
    guard let i = args.firstIndex(where: names.contains), i + 1 < args.count else { return nil }
    defer { args.removeSubrange(i...(i + 1)) }
    return args[i + 1]
}
let prompt = option(["--prompt", "-p"]) ?? "The capital of France is"
let maxNew = Int(option(["-n", "--max-new-tokens"]) ?? "64") ?? 64
let chat = args.contains("--chat")
args.removeAll { $0 == "--chat" }
guard let path = args.first else {
    FileHandle.standardError.write("usage: edgeslm-coreml-run BUNDLE [--prompt TEXT] [--chat] [-n N]\n".data(using: .utf8)!)
    exit(2)
}

do {
    let t0 = Date()
    let runner = try await Runner(bundleURL: URL(fileURLWithPath: path))
    let t1 = Date()
    let ids = try await runner.generate(prompt, chat: chat, maxNewTokens: maxNew) { piece in
        print(piece, terminator: "")
        fflush(stdout)
    }
    let t2 = Date()
    print()
    let rate = Double(ids.count) / t2.timeIntervalSince(t1)
    FileHandle.standardError.write(String(format: "[%@ %@: load %.1f s, %d tokens, %.1f tok/s incl. prefill]\n",
        runner.bundle.precision, runner.bundle.format, t1.timeIntervalSince(t0), ids.count, rate).data(using: .utf8)!)
} catch {
    FileHandle.standardError.write("error: \(error)\n".data(using: .utf8)!)
    exit(1)
}
