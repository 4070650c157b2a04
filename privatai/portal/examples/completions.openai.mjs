import OpenAI from "openai";

const client = new OpenAI({ baseURL: "__BASE_URL__", apiKey: process.env.PRIVATAI_API_KEY });

const completion = await client.completions.create({
  model: "__MODEL__",
  prompt: "The three largest cities in Germany are",
  max_tokens: 30,
});
console.log(completion.choices[0].text);
console.log(`[${completion.usage.total_tokens} tokens]`);
