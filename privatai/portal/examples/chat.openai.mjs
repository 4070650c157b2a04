import OpenAI from "openai";

const client = new OpenAI({ baseURL: "__BASE_URL__", apiKey: process.env.PRIVATAI_API_KEY });

const completion = await client.chat.completions.create({
  model: "__MODEL__",
  messages: [{ role: "user", content: "What is machine learning?" }],
  max_tokens: 100,
});
console.log(completion.choices[0].message.content);
console.log(completion.usage);
