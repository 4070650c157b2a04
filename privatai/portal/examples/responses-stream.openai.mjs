import OpenAI from "openai";

const client = new OpenAI({ baseURL: "__BASE_URL__", apiKey: process.env.PRIVATAI_API_KEY });

const stream = await client.responses.create({
  model: "__MODEL__",
  input: "Hello, how are you?",
  max_output_tokens: 100,
  stream: true,
});
for await (const event of stream) {
  if (event.type === "response.output_text.delta") {
    process.stdout.write(event.delta);
  } else if (event.type === "response.completed" || event.type === "response.incomplete") {
    // response.incomplete: the answer was cut at max_output_tokens
    console.log(`\n[${event.response.usage.total_tokens} tokens]`);
  }
}
