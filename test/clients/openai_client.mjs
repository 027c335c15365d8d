// Checks `orrery serve` with the official openai npm client (pinned in
// package.json; `npm ci` here installs it):
//
//   node openai_client.mjs BASE_URL MODEL [API_KEY]
//
// BASE_URL is the server's /v1 (http://127.0.0.1:18181/v1). Every check
// names itself when it fails (exit 1); when all pass, one JSON line of
// results is printed (exit 0). Generations are greedy (temperature 0), so
// the same request gives the same text streamed or not.

import OpenAI from "openai";

const [baseURL, model, apiKey] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node openai_client.mjs BASE_URL MODEL [API_KEY]");
  process.exit(2);
}

class CheckFailed extends Error {}

let current = "setup";
function fail(what) {
  throw new CheckFailed(`check ${current} failed: ${what}`);
}
function expect(condition, what) {
  if (!condition) fail(what);
}
function expectEqual(actual, expected, what) {
  if (actual !== expected) fail(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

// The error `request` must throw: an instance of `type` with `status` and,
// when given, `param` (both on the error and on its `error` body).
async function expectError(request, type, status, param) {
  let caught;
  try {
    await request();
  } catch (e) {
    caught = e;
  }
  expect(caught !== undefined, `expected ${type.name} (${status}), but the request succeeded`);
  if (!(caught instanceof type))
    fail(`expected ${type.name}, got ${caught?.constructor?.name}: ${caught?.message}`);
  expectEqual(caught.status, status, "the error's status");
  if (param !== undefined) {
    expectEqual(caught.param, param, "the error's param");
    expectEqual(caught.error?.param, param, "error.param in the body");
  }
  return caught;
}

// Every event of a stream; the client throws on an error event.
async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

const client = new OpenAI({ baseURL, apiKey: apiKey || "none", maxRetries: 0 });
const results = { model };

async function main() {
  current = "a (models.list contains the model)";
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  expect(ids.includes(model), `${JSON.stringify(model)} is not in ${JSON.stringify(ids)}`);
  results.models = ids;

  current = "b (completion, greedy, max_tokens 24)";
  const request = { model, prompt: "In the beginning", max_tokens: 24, temperature: 0 };
  const completion = await client.completions.create(request);
  expectEqual(completion.choices?.length, 1, "the number of choices");
  const text = completion.choices[0].text;
  expect(typeof text === "string" && text.length > 0, `the text is empty or not a string: ${JSON.stringify(text)}`);
  expectEqual(completion.choices[0].finish_reason, "length", "finish_reason");
  expectEqual(completion.usage?.completion_tokens, 24, "usage.completion_tokens");
  expectEqual(completion.usage?.prompt_tokens, 17, "usage.prompt_tokens (BOS + 16 bytes)");
  expectEqual(completion.usage?.total_tokens, 41, "usage.total_tokens");
  results.completion_text = text;

  current = "c (streamed completion equals b)";
  const chunks = await collect(await client.completions.create({ ...request, stream: true }));
  expect(chunks.length > 0, "the stream had no chunks");
  const streamed = chunks.map((c) => c.choices?.[0]?.text ?? "").join("");
  expectEqual(streamed, text, "the concatenated chunk texts");
  expectEqual(chunks.at(-1).choices?.[0]?.finish_reason, "length", "the last chunk's finish_reason");
  results.completion_chunks = chunks.length;

  current = "d (chat, non-streaming)";
  const chatRequest = {
    model,
    messages: [{ role: "user", content: "Who made the heaven?" }],
    max_tokens: 16,
    temperature: 0,
  };
  const chat = await client.chat.completions.create(chatRequest);
  expectEqual(chat.choices?.length, 1, "the number of choices");
  const message = chat.choices[0].message;
  expectEqual(message?.role, "assistant", "message.role");
  expect(typeof message.content === "string", `message.content is not a string: ${JSON.stringify(message.content)}`);
  expect(["length", "stop"].includes(chat.choices[0].finish_reason), `finish_reason is ${chat.choices[0].finish_reason}`);
  expect(chat.usage?.completion_tokens > 0 && chat.usage.completion_tokens <= 16, `usage.completion_tokens is ${chat.usage?.completion_tokens}`);
  results.chat_text = message.content;
  results.chat_finish_reason = chat.choices[0].finish_reason;

  current = "d (chat, streaming with include_usage)";
  const chatChunks = await collect(
    await client.chat.completions.create({ ...chatRequest, stream: true, stream_options: { include_usage: true } }),
  );
  expect(chatChunks.length >= 2, `only ${chatChunks.length} chunks`);
  const withChoices = chatChunks.filter((c) => c.choices?.length > 0);
  expect(withChoices.length > 0, "no chunk has a choice");
  expectEqual(withChoices[0].choices[0].delta?.role, "assistant", "the first delta's role");
  const deltas = withChoices.map((c) => c.choices[0].delta?.content ?? "").join("");
  expectEqual(deltas, message.content, "the concatenated deltas");
  expectEqual(withChoices.at(-1).choices[0].finish_reason, chat.choices[0].finish_reason, "the last choice's finish_reason");
  const last = chatChunks.at(-1);
  expect(last.usage != null, `the last chunk has no usage: ${JSON.stringify(last)}`);
  expectEqual(last.choices?.length, 0, "the usage chunk's number of choices");
  expectEqual(last.usage.prompt_tokens, chat.usage.prompt_tokens, "the usage chunk's prompt_tokens");
  expectEqual(last.usage.completion_tokens, chat.usage.completion_tokens, "the usage chunk's completion_tokens");
  expect(
    chatChunks.slice(0, -1).every((c) => c.usage == null),
    "a chunk before the last has usage",
  );
  results.chat_chunks = chatChunks.length;

  current = "e (unknown model -> NotFoundError, param model)";
  await expectError(
    () => client.completions.create({ ...request, model: `${model}-no-such-model` }),
    OpenAI.NotFoundError,
    404,
    "model",
  );

  current = "e (max_tokens 100000 -> BadRequestError, param max_tokens)";
  await expectError(() => client.completions.create({ ...request, max_tokens: 100000 }), OpenAI.BadRequestError, 400, "max_tokens");

  current = "e (temperature 5 -> BadRequestError, param temperature)";
  await expectError(() => client.completions.create({ ...request, temperature: 5 }), OpenAI.BadRequestError, 400, "temperature");

  current = "f (stop string from b's second word)";
  const words = text.split(/\s+/).filter((w) => w.length > 0);
  expect(words.length >= 2, `b's text has fewer than two words: ${JSON.stringify(text)}`);
  const stop = words[1].slice(0, 3);
  const at = text.indexOf(stop);
  const stopped = await client.completions.create({ ...request, stop });
  expectEqual(stopped.choices[0].text, text.slice(0, at), `the text with stop ${JSON.stringify(stop)}`);
  expectEqual(stopped.choices[0].finish_reason, "stop", "finish_reason");
  results.stop = stop;
  results.stopped_text = stopped.choices[0].text;

  if (apiKey) {
    current = "g (wrong API key -> AuthenticationError)";
    const wrong = new OpenAI({ baseURL, apiKey: `${apiKey}-wrong`, maxRetries: 0 });
    await expectError(() => wrong.models.list(), OpenAI.AuthenticationError, 401);
    await expectError(() => wrong.completions.create(request), OpenAI.AuthenticationError, 401);
    results.auth_checked = true;
  } else {
    results.auth_checked = false;
  }
}

try {
  await main();
  console.log(JSON.stringify({ ok: true, ...results }));
  process.exit(0);
} catch (e) {
  if (e instanceof CheckFailed) console.error(e.message);
  else console.error(`check ${current} failed: ${e?.constructor?.name}: ${e?.message}`);
  process.exit(1);
}
