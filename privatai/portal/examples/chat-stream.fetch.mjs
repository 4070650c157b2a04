const response = await fetch("__BASE_URL__/chat/completions", {
  method: "POST",
  headers: {
    "Authorization": `Bearer ${process.env.PRIVATAI_API_KEY}`,
    "Content-Type": "application/json",
  },
  body: JSON.stringify({
    model: "__MODEL__",
    messages: [{ role: "user", content: "Hello, how are you?" }],
    max_tokens: 100,
    stream: true,
  }),
});
if (!response.ok) throw new Error((await response.json()).error.message);

const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = "";
while (true) {
  const { done, value } = await reader.read();
  if (done) break;
  buffer += decoder.decode(value, { stream: true });
  const lines = buffer.split("\n");
  buffer = lines.pop(); // a line cut off between two network chunks waits for the rest
  for (const line of lines) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const chunk = JSON.parse(line.slice(6));
    if (chunk.error) throw new Error(chunk.error.message);
    process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
    if (chunk.usage) console.log(`\n[${chunk.usage.total_tokens} tokens]`);
  }
}
