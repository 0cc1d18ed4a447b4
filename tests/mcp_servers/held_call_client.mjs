// The TypeScript SDK's client, with its defaults (a 60 s request timeout), calling one tool
// through `nhidel mcp run`; prints the call's result, or the error it threw, as one JSON line.
// Arguments: TOOL ARGS_JSON COMMAND [ARG...] (the gateway's command; its environment is ours).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [tool, args, command, ...commandArgs] = process.argv.slice(2);
const transport = new StdioClientTransport({ command, args: commandArgs, env: process.env });
const client = new Client({ name: "nhidel-tests", version: "1" });
await client.connect(transport);
try {
  const result = await client.callTool({ name: tool, arguments: JSON.parse(args) });
  console.log(JSON.stringify({ result }));
} catch (error) {
  console.log(JSON.stringify({ error: { code: error.code ?? null, message: String(error.message) } }));
}
await client.close();
