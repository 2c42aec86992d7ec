#!/usr/bin/env python3
"""Load test for `tessera serve`: aggregate generated tokens/s with 1 and with N concurrent streams.

  python3 runtime-lite/server/load.py --url http://127.0.0.1:11434 --model NAME [--streams 1,8] [--tokens 128]

Every request is /v1/completions with a different prompt, temperature 0, max_tokens --tokens and
ignore-EOS-free text (the prompt asks for a story). Tokens are counted from usage.completion_tokens
of the streamed usage chunk. Prints one line per concurrency level and the speed-up over 1 stream.
Standard library only.
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse

PROMPTS = ["Once upon a time", "The little dog", "One day, Lily", "Tom and his mom", "The sun was hot",
           "A big red ball", "In the park", "The old man", "She wanted to", "There was a cat",
           "The bird sang", "Max liked to", "The girl saw", "They went to", "It was a rainy day", "The boy had"]


def one(url, model, prompt, tokens, out, i):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    n = 0
    for raw in resp:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            j = json.loads(line[6:])
            if j.get("usage"):
                n = j["usage"]["completion_tokens"]
    out[i] = n
    conn.close()


def run(url, model, streams, tokens):
    out = [0] * streams
    threads = [threading.Thread(target=one, args=(url, model, PROMPTS[i % len(PROMPTS)], tokens, out, i))
               for i in range(streams)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    return sum(out), dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:11434")
    ap.add_argument("--model", required=True)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    run(a.url, a.model, 1, 8)  # warm-up
    base = None
    for n in [int(x) for x in a.streams.split(",")]:
        toks, dt = run(a.url, a.model, n, a.tokens)
        tps = toks / dt if dt > 0 else 0
        base = base or tps
        print(f"streams={n:2d} tokens={toks:6d} seconds={dt:7.2f} aggregate_tok_s={tps:8.1f} speedup={tps / base:5.2f}x")


if __name__ == "__main__":
    main()
