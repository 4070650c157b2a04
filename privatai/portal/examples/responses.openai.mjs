import OpenAI from "openai";

const client = new OpenAI({ baseURL: "__BASE_URL__", apiKey: process.env.PRIVATAI_API_KEY });

const response = await client.responses.create({
  model: "__MODEL__",
  instructions: "Answer in one sentence.",
  input: "What is machine learning?",
  max_output_tokens: 100,
});
console.log(response.output_text);
console.log(`[${response.usage.total_tokens} tokens]`);
