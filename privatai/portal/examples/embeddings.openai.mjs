import OpenAI from "openai";

const client = new OpenAI({ baseURL: "__BASE_URL__", apiKey: process.env.PRIVATAI_API_KEY });

const result = await client.embeddings.create({
  model: "__MODEL__",
  input: ["Privacy by design", "Hosted in Germany"],
});
for (const item of result.data) {
  console.log(`${item.embedding.length} dimensions: ${item.embedding.slice(0, 3)}`);
}
console.log(`[${result.usage.total_tokens} tokens]`);
