"""Chat templates: real models' templates render exactly as Jinja renders them; hostile ones
stop at a named limit, and every template failure is a one-line error."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgeslm.chat_template import TemplateLimits, render
from edgeslm.errors import ChatTemplateError, ChatTemplateLimitError, GenerationError

# Written after the templates these model families ship (tokenizer_config.json / GGUF metadata).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = """{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}{%- set role = "model" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}
"""
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}
    {%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools>\\n\\nReturn a json object within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
DEEPSEEK_R1 = (
    "{% set ns = namespace(is_first=false, system_prompt='') %}{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}"
    "{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
REAL = {"smollm2": SMOLLM2, "llama3": LLAMA3, "gemma": GEMMA, "gemma3": GEMMA3, "qwen2.5": QWEN25,
        "phi3": PHI3, "deepseek-r1": DEEPSEEK_R1}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def chat(n_turns: int, system: bool) -> list[dict]:
    msgs = [{"role": "system", "content": "You are brief."}] if system else []
    for i in range(n_turns):
        msgs.append({"role": "user", "content": f"  Question {i}: what is {i} + {i}? Ünïcödé 🙂  "})
        msgs.append({"role": "assistant", "content": f"<think>add</think>It is {2 * i}."})
    return msgs + [{"role": "user", "content": "And the capital of France?"}]


def reference(source: str, **variables) -> str:
    """Plain Jinja, the way transformers renders these templates, without any limits."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(**variables)


@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("turns", [0, 3, 200])
def test_real_templates_render_exactly_as_jinja_does(name, turns):
    no_system = name in ("gemma", "gemma3")  # Gemma refuses a system role (Gemma 3 folds it in)
    variables = dict(messages=chat(turns, system=not no_system), add_generation_prompt=True,
                     bos_token="<s>", eos_token="</s>")
    t0 = time.perf_counter()
    out = render(REAL[name], **variables)
    took = time.perf_counter() - t0
    assert out == reference(REAL[name], **variables)
    assert "capital of France" in out and took < TemplateLimits().max_seconds / 4


def test_tool_calling_templates_render_exactly_as_jinja_does():
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "18 C, sunny"},
                {"role": "assistant", "content": "It is 18 C and sunny in Paris."},
                {"role": "user", "content": "Thanks"}]
    for name in ("llama3", "qwen2.5"):
        variables = dict(messages=messages, tools=TOOLS, add_generation_prompt=True, bos_token="<s>")
        out = render(REAL[name], **variables)
        assert out == reference(REAL[name], **variables) and "get_weather" in out and '"city": "Paris"' in out


def test_a_template_refusal_is_one_line():
    with pytest.raises(ChatTemplateError, match="refused the messages: System role not supported"):
        render(GEMMA, messages=chat(1, system=True), add_generation_prompt=True, bos_token="")


LIMIT_CASES = [  # (id, template, limit that must be named)
    ("repeat-400MB", "{{ 'A' * 400000000 }}", "max_value_chars"),
    ("list-repeat", "{{ ([1] * 100000000)|length }}", "max_value_chars"),
    ("nested-range-100k", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "max_range"),
    ("nested-range-10k", "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
     "max_loop_iterations"),
    ("loop-over-long-string", "{% set s = 'x' * 1000000 %}{% for c in s %}{% endfor %}", "max_loop_iterations"),
    ("output", "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}", "max_output_chars"),
    ("output-in-set-block", "{% for i in range(10000) %}{% set b %}{{ 'y' * 1000 }}{% endset %}{% endfor %}",
     "max_output_chars"),
    ("center", "{{ 'a'.center(400000000) }}", "max_value_chars"),
    ("center-filter", "{{ 'a'|center(400000000) }}", "max_value_chars"),
    ("ljust", "{{ 'a'.ljust(400000000) }}", "max_value_chars"),
    ("to-bytes", "{{ (1).to_bytes(400000000, 'big') }}", "max_value_chars"),
    ("format-width", "{{ '{:>400000000}'.format('a') }}", "max_value_chars"),
    ("format-precision", "{{ '{:.400000000f}'.format(1.0) }}", "max_value_chars"),
    ("percent-width", "{{ '%400000000s' % 'a' }}", "max_value_chars"),
    ("format-filter-width", "{{ '%400000000s'|format('a') }}", "max_value_chars"),
    ("join-filter", "{% set a = 'A' * 1000000 %}{{ ([a] * 100000)|join }}", "max_value_chars"),
    ("join-method", "{% set a = 'A' * 1000000 %}{{ ''.join([a] * 100000) }}", "max_value_chars"),
    ("join-separator", "{% set a = 'A' * 1000000 %}{{ range(5000)|join(a) }}", "max_value_chars"),
    ("tilde-concat", "{% set a = 'A' * 1000000 %}{{ a ~ a ~ a }}", "max_value_chars"),
    ("doubling-tilde", "{% set ns = namespace(s='A') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}", "max_value_chars"),
    ("doubling-plus", "{% set ns = namespace(s='A') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}", "max_value_chars"),
    ("doubling-list", "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}"
                      "{% endfor %}", "max_value_chars"),
    ("replace", "{% set a = 'x' * 1000000 %}{{ a|replace('x', 'xxxxxxxxxx') }}", "max_value_chars"),
    ("replace-method", "{% set a = 'x' * 1000000 %}{{ a.replace('x', 'xxxxxxxxxx') }}", "max_value_chars"),
    ("indent", "{% set a = '\n' * 1000000 %}{{ a|indent(1000) }}", "max_value_chars"),
    ("wordwrap", "{% set a = 'x' * 1000000 %}{{ a|wordwrap(1, true, 'y' * 1000) }}", "max_value_chars"),
    ("expandtabs", "{% set a = '\t' * 1000000 %}{{ a.expandtabs(1000) }}", "max_value_chars"),
    ("squaring", "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
     "max_int_bits"),
    ("power", "{{ 10 ** 100000 }}", "max_int_bits"),
    ("slice-into-millions", "{{ range(10)|slice(2000000)|list|length }}", "max_range"),
    ("template-size", "x" * 300_000, "max_template_chars"),
]


@pytest.mark.parametrize("case", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_exhaustion_stops_at_the_named_limit(case):
    _, source, limit = case
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateLimitError) as exc:
        render(source, messages=[])
    assert exc.value.limit == limit and f"(limit {limit})" in str(exc.value) and "\n" not in str(exc.value)
    assert time.perf_counter() - t0 < 1.5  # stopped early, not after the work was done


def test_exponential_macro_recursion_stops_at_the_time_limit():
    source = "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateLimitError, match=r"took more than 0.3 s \(limit max_seconds\)"):
        render(source, limits=TemplateLimits(max_seconds=0.3))
    assert time.perf_counter() - t0 < 1.5


@pytest.mark.parametrize("source, message", [
    ("{% for %}", "syntax error at line 1"),
    ("{{ foo.bar }}", "undefined value: 'foo' is undefined"),
    ("{{ ''.__class__.__mro__ }}", "unsafe operation: access to attribute '__class__'"),
    ("{{ messages.append(1) }}", "unsafe operation: access to attribute 'append'"),
    ("{{ cycler.__init__.__globals__ }}", "unsafe operation"),
    ("{{ 1 + 'a' }}", "failed: TypeError"),
    ("{{ 1 // 0 }}", "failed: ZeroDivisionError"),
    ("{{ lipsum(1000000) }}", "'lipsum' is undefined"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
    ("{% for x in items recursive %}{{ loop(items) }}{% endfor %}", "recursed too deeply"),
    ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested too deeply to compile"),
    ("{% include 'x.j2' %}", "no loader"),
    ("{{ '%*s' % (400000000, 'a') }}", "format widths taken from arguments"),
    ("{{ '{:{}}'.format('a', 400000000) }}", "format widths taken from arguments"),
    ("{{ messages|tojson(indent=1000000) }}", "tojson indent must be 0..16"),
])
def test_template_errors_are_one_line(source, message):
    with pytest.raises(ChatTemplateError) as exc:
        render(source, messages=[{"role": "user", "content": "hi"}], items=[1, 2])
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, GenerationError)


def test_numbers_are_data_not_widths():
    out = render("{{ 9 ** 9 ** 9 }} {{ 5000000 }} {{ '%d'|format(5000000) }} {{ '{}'.format(10 ** 30) }} "
                 "{{ '{{\"name\": \"{}\"}}'.format('x') }} {{ '%5.2f' % 3.14159 }}")
    assert out.split() == [str((9 ** 9) ** 9), "5000000", "5000000", str(10 ** 30), '{"name":', '"x"}', "3.14"]


@pytest.mark.usefixtures("onnx_bundle")
def test_hostile_template_in_a_bundle_is_a_one_line_cli_error(onnx_bundle, tmp_path, capsys):
    """The attack end to end: a bundle whose chat template tries to take 400 MB."""
    from edgeslm.bundle import write_manifest
    from edgeslm.cli import main

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    cfg = json.loads((b / "edgeslm_tokenizer.json").read_text())
    cfg["chat_template"] = "{{ 'A' * 400000000 }}"
    (b / "edgeslm_tokenizer.json").write_text(json.dumps(cfg))
    m = json.loads((b / "manifest.json").read_text())
    write_manifest(b, {k: v for k, v in m.items() if k not in ("schema_version", "edgeslm_version", "created", "files")})
    code = main(["run", str(b), "--chat", "--prompt", "hi", "-n", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "(limit max_value_chars)" in err
