package dev.edgeslm.example

import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.lifecycleScope
import com.google.ai.edge.litertlm.Conversation
import com.google.ai.edge.litertlm.Engine
import com.google.ai.edge.litertlm.EngineConfig
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File

/**
 * A one-screen chat over the `.litertlm` file an edgeslm LiteRT bundle contains.
 *
 * Push the file first (README): `adb push BUNDLE/model.litertlm /data/local/tmp/edgeslm/`.
 * The chat template, stop tokens and tokenizer travel inside the file, so the app needs
 * nothing else. Generation runs off the main thread and streams into the text view.
 */
class MainActivity : AppCompatActivity() {
    private var engine: Engine? = null
    private var conversation: Conversation? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val prompt = findViewById<EditText>(R.id.prompt)
        val send = findViewById<Button>(R.id.send)
        val answer = findViewById<TextView>(R.id.answer)

        lifecycleScope.launch {
            val model = File(MODEL_PATH)
            if (!model.isFile) {
                answer.text = "No model at $MODEL_PATH: adb push your bundle's model.litertlm there (README)."
                return@launch
            }
            try {
                val started = withContext(Dispatchers.Default) {
                    Engine(EngineConfig(modelPath = model.path)).also { it.initialize() }
                }
                engine = started
                conversation = started.createConversation()
                answer.text = "Ready."
                send.isEnabled = true
            } catch (e: Exception) {
                answer.text = "Could not open $MODEL_PATH: ${e.message}"
            }
        }

        send.setOnClickListener {
            val text = prompt.text.toString().trim()
            val chat = conversation ?: return@setOnClickListener
            if (text.isEmpty()) return@setOnClickListener
            send.isEnabled = false
            answer.text = ""
            lifecycleScope.launch {
                try {
                    chat.sendMessageAsync(text).collect { piece -> answer.append(piece.toString()) }
                } catch (e: Exception) {
                    answer.append("\n[error: ${e.message}]")
                } finally {
                    send.isEnabled = true
                }
            }
        }
    }

    override fun onDestroy() {
        conversation?.close()
        engine?.close()
        super.onDestroy()
    }

    companion object {
        const val MODEL_PATH = "/data/local/tmp/edgeslm/model.litertlm"
    }
}
