// The API reference page: each operation of /openapi.json with its parameters, body,
// responses and a curl example. Works offline: nothing is loaded from elsewhere.
"use strict";

function node(tag, className, text) {
  const item = document.createElement(tag);
  if (className) item.className = className;
  if (text !== undefined) item.textContent = text;
  return item;
}

function schemaText(schema, spec) {
  if (!schema) return "";
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    const target = spec.components && spec.components.schemas && spec.components.schemas[name];
    if (target && target.properties) {
      return Object.entries(target.properties)
        .map(([key, value]) => `${key}${(target.required || []).includes(key) ? "" : "?"}: ${schemaText(value, spec)}`)
        .join(", ");
    }
    return name;
  }
  if (schema.anyOf) return schema.anyOf.map((s) => schemaText(s, spec)).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "array") return `[${schemaText(schema.items, spec)}]`;
  if (schema.format === "binary" || schema.contentMediaType) return "file";
  return schema.type || "value";
}

function operationCard(path, method, operation, spec) {
  const card = node("article", "card operation");
  const title = node("h3", "card-title", `${method.toUpperCase()} ${path} `);
  title.append(node("span", "muted", operation.summary || ""));
  card.append(title);
  if (operation.description) card.append(node("p", "", operation.description));
  const parameters = operation.parameters || [];
  if (parameters.length) {
    card.append(node("h4", "", "Parameters"));
    const list = node("ul");
    for (const parameter of parameters) {
      list.append(node("li", "", `${parameter.name} (${parameter.in}${parameter.required ? ", required" : ""}): ${schemaText(parameter.schema, spec)}${parameter.description ? ` — ${parameter.description}` : ""}`));
    }
    card.append(list);
  }
  const body = operation.requestBody && operation.requestBody.content;
  let fields = [];
  if (body) {
    card.append(node("h4", "", "Body"));
    for (const [type, content] of Object.entries(body)) {
      card.append(node("p", "", `${type}: ${schemaText(content.schema, spec)}`));
      const ref = content.schema && content.schema.$ref;
      const target = ref && spec.components.schemas[ref.split("/").pop()];
      if (target && target.properties) fields = Object.keys(target.properties);
    }
  }
  card.append(node("h4", "", "Responses"));
  const responses = node("ul");
  for (const [status, response] of Object.entries(operation.responses || {})) {
    responses.append(node("li", "", `${status}: ${response.description || ""}`));
  }
  card.append(responses);
  const key = operation.security ? " -H 'X-API-Key: KEY'" : "";
  const form = fields.includes("file") ? ` -F file=@${path.includes("video") ? "video.mp4" : "photo.jpg"}` : "";
  const curlMethod = method === "get" ? "" : ` -X ${method.toUpperCase()}`;
  const example = node("pre", "example", `curl${curlMethod}${key}${form} ${location.origin}${path.replace("{job_id}", "JOB_ID")}`);
  card.append(example);
  return card;
}

async function start() {
  const target = document.getElementById("operations");
  let spec;
  try {
    spec = await (await fetch("/openapi.json")).json();
  } catch (error) {
    target.append(node("p", "status error", `The schema could not be read: ${error.message}`));
    return;
  }
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      target.append(operationCard(path, method, operation, spec));
    }
  }
}

document.addEventListener("DOMContentLoaded", start);
