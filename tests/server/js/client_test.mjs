// Drives `tessera serve` with the real `openai` and `ollama` npm packages (pinned in install.sh).
// Usage: node client_test.mjs TESSERA_BIN FIXTURES_DIR   (run from the directory holding node_modules)
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { Ollama } from 'ollama';

const [bin, fixtures] = process.argv.slice(2);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-js-'));
const children = [];
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});

function convert(src, name) {
  const out = path.join(tmp, name);
  const r = spawnSync(bin, ['convert', src, '-o', out, '-q'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return out;
}

async function startServer(args) {
  const child = spawn(bin, ['serve', ...args, '--host', '127.0.0.1', '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start: ' + log)), 60000);
    child.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\n/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.on('exit', () => reject(new Error('server exited: ' + log)));
  });
  const stop = () =>
    new Promise((resolve) => {
      child.on('exit', (code) => resolve(code));
      child.kill('SIGTERM');
    });
  return { port, stop };
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

const qwen = convert(path.join(fixtures, 'tiny/qwen2'), 'qwen2');
const stories = convert(path.join(fixtures, 'stories260K/hf'), 's260k');
const srv = await startServer([qwen, stories, '--parallel', '8']);
const base = `http://127.0.0.1:${srv.port}`;
const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'sk-no-key', maxRetries: 0 });
const ollama = new Ollama({ host: base });

test('openai: models.list', async () => {
  const ids = [];
  for await (const m of openai.models.list()) ids.push(m.id);
  assert.deepEqual(ids, ['qwen2:latest', 's260k:latest']);
});

test('openai: chat non-stream and stream with usage', async () => {
  const req = { model: 'qwen2', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 10, temperature: 0 };
  const r = await openai.chat.completions.create(req);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  const text = r.choices[0].message.content;
  const stream = await openai.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let streamed = '';
  let usage = null;
  let finishes = 0;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      streamed += c.delta?.content ?? '';
      if (c.finish_reason) finishes++;
    }
  }
  assert.equal(streamed, text);
  assert.equal(finishes, 1);
  assert.ok(usage, 'usage chunk reached the SDK (sent before [DONE])');
  assert.deepEqual(usage, r.usage);
});

test('openai: completions, max_tokens -> length, stop, seed', async () => {
  const r = await openai.completions.create({ model: 's260k:latest', prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
  assert.ok(r.choices[0].text.startsWith(', there was a little girl'), r.choices[0].text);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 20);
  const s = await openai.completions.create({ model: 's260k', prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stop: [' little'] });
  assert.equal(s.choices[0].text, ', there was a');
  assert.equal(s.choices[0].finish_reason, 'stop');
  const seeded = { model: 's260k', prompt: 'Once upon a time', max_tokens: 30, temperature: 1, seed: 42 };
  const a = await openai.completions.create(seeded);
  const b = await openai.completions.create(seeded);
  assert.equal(a.choices[0].text, b.choices[0].text);
});

test('openai: embeddings (SDK default base64) equal float', async () => {
  const dflt = await openai.embeddings.create({ model: 's260k', input: ['hello world', 'once upon a time'] });
  const flt = await openai.embeddings.create({ model: 's260k', input: ['hello world', 'once upon a time'], encoding_format: 'float' });
  assert.equal(dflt.data.length, 2);
  assert.equal(dflt.data[0].embedding.length, 64);
  for (let i = 0; i < 2; i++)
    for (let j = 0; j < 64; j++) assert.ok(Math.abs(dflt.data[i].embedding[j] - flt.data[i].embedding[j]) < 1e-6);
});

test('openai: errors map to SDK exceptions', async () => {
  await assert.rejects(openai.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
  await assert.rejects(openai.chat.completions.create({ model: 's260k', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.BadRequestError && /chat template/.test(e.message));
});

test('openai: structured output, logprobs and n choices', async () => {
  const schema = {
    type: 'object',
    properties: { color: { enum: ['red', 'green', 'blue'] }, ok: { type: 'boolean' } },
    required: ['color', 'ok'],
    additionalProperties: false,
  };
  const r = await openai.chat.completions.create({
    model: 'qwen2', messages: [{ role: 'user', content: 'JSON please' }], temperature: 0, max_tokens: 200,
    response_format: { type: 'json_schema', json_schema: { name: 'sky', schema, strict: true } },
  });
  assert.equal(r.choices[0].finish_reason, 'stop', r.choices[0].message.content);
  const v = JSON.parse(r.choices[0].message.content);
  assert.deepEqual(Object.keys(v).sort(), ['color', 'ok']);
  assert.ok(['red', 'green', 'blue'].includes(v.color));
  assert.equal(typeof v.ok, 'boolean');
  const lp = await openai.chat.completions.create({
    model: 'qwen2', messages: [{ role: 'user', content: 'Hi' }], temperature: 0, max_tokens: 5, logprobs: true, top_logprobs: 3,
  });
  assert.equal(lp.choices[0].logprobs.content.length, lp.usage.completion_tokens);
  for (const e of lp.choices[0].logprobs.content) {
    assert.equal(e.top_logprobs.length, 3);
    assert.ok(e.logprob <= 0 && Math.abs(e.logprob - e.top_logprobs[0].logprob) < 1e-6);
  }
  const n = await openai.completions.create({ model: 's260k', prompt: 'Once upon a time', max_tokens: 8, n: 2, seed: 5 });
  assert.equal(n.choices.length, 2);
  assert.deepEqual(n.choices.map((c) => c.index), [0, 1]);
});

test('ollama: format json schema', async () => {
  const schema = { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] };
  const r = await ollama.chat({
    model: 'qwen2', messages: [{ role: 'user', content: 'JSON please' }], format: schema, options: { temperature: 0, num_predict: 200 },
  });
  assert.equal(r.done_reason, 'stop', r.message.content);
  assert.equal(typeof JSON.parse(r.message.content).ok, 'boolean');
});

test('ollama: list, ps, show, version', async () => {
  const l = await ollama.list();
  assert.deepEqual(l.models.map((m) => m.name), ['qwen2:latest', 's260k:latest']);
  const ps = await ollama.ps();
  assert.ok(ps.models.length >= 1);
  const show = await ollama.show({ model: 'qwen2' });
  assert.equal(show.model_info['general.architecture'], 'qwen2');
  const v = await ollama.version();
  assert.match(v.version, /^\d+\.\d+\.\d+/);
});

test('ollama: generate and chat, stream and not', async () => {
  const req = { model: 's260k', prompt: 'Once upon a time', options: { temperature: 0, num_predict: 20, repeat_penalty: 1 } };
  const r = await ollama.generate(req);
  assert.ok(r.response.startsWith(', there was a little girl'), r.response);
  assert.equal(r.done_reason, 'length');
  assert.equal(r.eval_count, 20);
  let text = '';
  let evalSum = 0;
  let last;
  for await (const part of await ollama.generate({ ...req, stream: true })) {
    text += part.response;
    evalSum += part.eval_count ?? 0;
    last = part;
  }
  assert.equal(text, r.response);
  assert.equal(evalSum, 20, 'metrics only on the final line');
  assert.equal(last.done, true);
  const chatReq = { model: 'qwen2', messages: [{ role: 'user', content: 'Hi' }], options: { temperature: 0, num_predict: 8 } };
  const c = await ollama.chat(chatReq);
  let ctext = '';
  for await (const part of await ollama.chat({ ...chatReq, stream: true })) ctext += part.message.content;
  assert.equal(ctext, c.message.content);
});

test('ollama: embed and embeddings', async () => {
  const e = await ollama.embed({ model: 's260k', input: ['hello world', 'bye'] });
  assert.equal(e.embeddings.length, 2);
  assert.equal(e.embeddings[0].length, 64);
  const l = await ollama.embeddings({ model: 's260k', prompt: 'hello world' });
  assert.equal(l.embedding.length, 64);
});

test('ollama: abort mid-stream, then the server is still correct', async () => {
  const req = { model: 's260k', prompt: 'Once upon a time', options: { temperature: 0, num_predict: 20, repeat_penalty: 1 } };
  const before = (await ollama.generate(req)).response;
  const client = new Ollama({ host: base });
  const stream = await client.generate({ model: 's260k', prompt: 'Once upon a time', stream: true, options: { num_predict: 100000 } });
  let n = 0;
  await assert.rejects(async () => {
    for await (const _ of stream) {
      if (++n === 3) stream.abort();
    }
  }, (e) => e.name === 'AbortError');
  assert.equal((await ollama.generate(req)).response, before);
  const err = await ollama.chat({ model: 'missing', messages: [{ role: 'user', content: 'x' }] }).catch((e) => e);
  assert.equal(err.status_code, 404);
  assert.match(err.error, /not found/);
});

test('auth: --api-key', async () => {
  const keyed = await startServer([stories, '--api-key', 'secret']);
  try {
    const bad = new OpenAI({ baseURL: `http://127.0.0.1:${keyed.port}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await assert.rejects(bad.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
    const good = new OpenAI({ baseURL: `http://127.0.0.1:${keyed.port}/v1`, apiKey: 'secret', maxRetries: 0 });
    const r = await good.completions.create({ model: 's260k', prompt: 'Once', max_tokens: 3 });
    assert.equal(r.usage.completion_tokens, 3);
    const ol = new Ollama({ host: `http://127.0.0.1:${keyed.port}`, headers: { Authorization: 'Bearer secret' } });
    assert.equal((await ol.list()).models.length, 1);
  } finally {
    await keyed.stop();
  }
});

let failed = 0;
for (const t of tests) {
  try {
    await t.fn();
    console.log(`ok   ${t.name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${t.name}\n${e?.stack ?? e}`);
  }
}
const code = await srv.stop();
assert.equal(code, 0, 'server exits cleanly on SIGTERM');
console.log(failed ? `${failed} of ${tests.length} failed` : `all ${tests.length} passed`);
process.exit(failed ? 1 : 0);
