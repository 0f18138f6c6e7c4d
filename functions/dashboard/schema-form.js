// A form generated from a job's config JSON schema (as pydantic writes it): strings, numbers and integers
// (with their bounds), booleans and enums get inputs of their own; anything else (nested objects, arrays,
// unions) a JSON text area. Values start from the job's default config. The API validates the config against
// the same schema; its 422 names the field, and showError puts the message beside it.

import { h } from "./dom.js";

/** Follow $ref (into $defs) and single-element allOf, which pydantic uses for nested models and enums. */
function resolve(schema, root, seen = new Set()) {
  let current = schema || {};
  while (current.$ref && !seen.has(current.$ref)) {
    seen.add(current.$ref);
    const path = current.$ref.replace(/^#\//, "").split("/");
    let target = root;
    for (const part of path) target = target && target[part];
    const { $ref, ...rest } = current;
    current = { ...(target || {}), ...rest };
  }
  if (Array.isArray(current.allOf) && current.allOf.length === 1) {
    const { allOf, ...rest } = current;
    current = { ...resolve(allOf[0], root, seen), ...rest };
  }
  return current;
}

/** The field's own schema and whether null is allowed (``X | None`` is anyOf [X, null]). */
function unwrapNullable(schema, root) {
  const resolved = resolve(schema, root);
  const options = resolved.anyOf || resolved.oneOf;
  if (Array.isArray(options)) {
    const rest = options.filter((option) => resolve(option, root).type !== "null");
    if (rest.length === 1 && rest.length < options.length) {
      const { anyOf, oneOf, ...outer } = resolved;
      return { schema: { ...resolve(rest[0], root), ...outer }, nullable: true };
    }
  }
  if (Array.isArray(resolved.type) && resolved.type.includes("null")) {
    const types = resolved.type.filter((type) => type !== "null");
    if (types.length === 1) return { schema: { ...resolved, type: types[0] }, nullable: true };
  }
  return { schema: resolved, nullable: false };
}

function kindOf(schema) {
  if (Array.isArray(schema.enum)) return "enum";
  if ("const" in schema) return "enum";
  if (schema.type === "boolean") return "boolean";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (schema.type === "string") return "string";
  return "json";
}

function describeBounds(schema) {
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push(`≥\u00a0${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) bounds.push(`>\u00a0${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) bounds.push(`≤\u00a0${schema.maximum}`);
  if (schema.exclusiveMaximum !== undefined) bounds.push(`<\u00a0${schema.exclusiveMaximum}`);
  if (schema.minLength !== undefined) bounds.push(`at least ${schema.minLength} characters`);
  if (schema.maxLength !== undefined) bounds.push(`at most ${schema.maxLength} characters`);
  return bounds.join(", ");
}

function field(name, propertySchema, root, required, initial, idPrefix) {
  const { schema, nullable } = unwrapNullable(propertySchema, root);
  const kind = kindOf(schema);
  const id = `${idPrefix}-${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const hintParts = [schema.description || propertySchema.description, describeBounds(schema)].filter(Boolean);
  if (kind === "json") hintParts.push(nullable ? "JSON (empty: null)" : "JSON");
  const optional = !required;
  const described = [hintParts.length ? hintId : null, errorId].filter(Boolean).join(" ");
  let control;
  let read;

  if (kind === "boolean" && !nullable) {
    control = h("input", { type: "checkbox", id, name, checked: initial === true, "aria-describedby": described });
    read = () => ({ value: control.checked });
  } else if (kind === "enum" || kind === "boolean") {
    const values = kind === "boolean" ? [true, false] : schema.enum || [schema.const];
    const chosen = initial === undefined ? undefined : JSON.stringify(initial);
    control = h(
      "select",
      { id, name, required: required && !nullable, "aria-describedby": described },
      // Required without a value yet: an empty choice, so that nothing is picked for the user.
      optional || nullable || initial === undefined
        ? h("option", { value: "" }, nullable ? "(none)" : optional ? "(default)" : "(choose)")
        : null,
      values.map((value) => {
        const encoded = JSON.stringify(value);
        return h("option", { value: encoded, selected: encoded === chosen }, String(value));
      }),
    );
    read = () => {
      if (control.value !== "") return { value: JSON.parse(control.value) };
      if (nullable) return { value: null };
      return optional ? { omit: true } : { error: "choose a value" };
    };
  } else if (kind === "number") {
    const integer = schema.type === "integer";
    let min = schema.minimum;
    let max = schema.maximum;
    if (schema.exclusiveMinimum !== undefined) min = integer ? schema.exclusiveMinimum + 1 : undefined;
    if (schema.exclusiveMaximum !== undefined) max = integer ? schema.exclusiveMaximum - 1 : undefined;
    control = h("input", {
      type: "number",
      id,
      name,
      inputmode: integer ? "numeric" : "decimal",
      step: integer ? (schema.multipleOf || 1) : (schema.multipleOf || "any"),
      min,
      max,
      required,
      placeholder: nullable ? "null" : undefined,
      value: typeof initial === "number" ? initial : undefined,
      "aria-describedby": described,
    });
    read = () => {
      if (control.validity.badInput) return { error: "enter a number" };
      if (control.value === "") return nullable ? { value: null } : { omit: true };
      if (!control.checkValidity()) return { error: control.validationMessage };
      return { value: Number(control.value) };
    };
  } else if (kind === "string") {
    control = h("input", {
      type: "text",
      id,
      name,
      required,
      minlength: schema.minLength,
      maxlength: schema.maxLength,
      autocomplete: "off",
      spellcheck: "false",
      placeholder: nullable ? "null" : undefined,
      value: typeof initial === "string" ? initial : undefined,
      "aria-describedby": described,
    });
    read = () => {
      if (control.value === "" && optional) return nullable ? { value: null } : { omit: true };
      if (!control.checkValidity()) return { error: control.validationMessage };
      return { value: control.value };
    };
  } else {
    const text = initial === undefined || initial === null ? "" : JSON.stringify(initial, null, 2);
    control = h("textarea", { id, name, rows: Math.min(10, Math.max(3, text.split("\n").length)), spellcheck: "false",
      class: "code", required, "aria-describedby": described }, text);
    read = () => {
      if (control.value.trim() === "") return optional ? (nullable ? { value: null } : { omit: true }) : { error: "enter a JSON value" };
      try {
        return { value: JSON.parse(control.value) };
      } catch (error) {
        return { error: `not valid JSON: ${error.message}` };
      }
    };
  }

  const label = h(
    "label",
    { for: id },
    h("span", { class: "field-name" }, name),
    required ? h("span", { class: "required" }, " (required)") : null,
  );
  const error = h("p", { class: "field-error", id: errorId, hidden: true });
  // A message about a value goes once the value is changed.
  const clear = () => {
    error.hidden = true;
    error.textContent = "";
    control.removeAttribute("aria-invalid");
  };
  control.addEventListener("input", clear);
  control.addEventListener("change", clear);
  const hint = hintParts.length ? h("p", { class: "hint", id: hintId }, hintParts.join(" · ")) : null;
  const wrapper = h(
    "div",
    { class: `field field-${kind === "boolean" && !nullable ? "checkbox" : kind}` },
    kind === "boolean" && !nullable ? [control, label] : [label, control],
    hint,
    error,
  );
  return { name, control, wrapper, read, error };
}

/**
 * The form's fields for ``schema`` (an object schema), starting from ``initial`` (the default config, or the
 * schema's defaults when that is null). ``read()`` returns {config, errors}; ``showError(name, message)``.
 */
export function configFields(schema, initial, { idPrefix = "config" } = {}) {
  const root = schema || {};
  const objectSchema = resolve(root, root);
  const properties = objectSchema.properties || {};
  const required = new Set(objectSchema.required || []);
  const start = initial || {};
  const fields = Object.entries(properties).map(([name, property]) => {
    const value = name in start ? start[name] : resolve(property, root).default;
    return field(name, property, root, required.has(name), value, idPrefix);
  });
  // A schema with no properties, or one that takes other keys: the whole config as JSON.
  const free = fields.length === 0 || (objectSchema.additionalProperties && objectSchema.additionalProperties !== false);
  const whole = free ? field("config", { type: "object", description: "the whole config" }, root, false, initial || {}, idPrefix) : null;

  function showError(name, message) {
    const target = fields.find((candidate) => candidate.name === name) || whole;
    if (!target) return false;
    target.error.hidden = false;
    target.error.textContent = message;
    target.control.setAttribute("aria-invalid", "true");
    return true;
  }

  function clearErrors() {
    for (const item of [...fields, whole].filter(Boolean)) {
      item.error.hidden = true;
      item.error.textContent = "";
      item.control.removeAttribute("aria-invalid");
    }
  }

  function read() {
    clearErrors();
    const config = {};
    const errors = [];
    for (const item of fields) {
      const result = item.read();
      if (result.error) errors.push({ name: item.name, message: result.error });
      else if (!result.omit) config[item.name] = result.value;
    }
    if (whole) {
      const result = whole.read();
      if (result.error) errors.push({ name: "config", message: result.error });
      else if (result.value && typeof result.value === "object") Object.assign(config, result.value);
    }
    for (const { name, message } of errors) showError(name, message);
    return { config, errors, focus: () => errors.length && fieldControl(errors[0].name)?.focus() };
  }

  function fieldControl(name) {
    return (fields.find((candidate) => candidate.name === name) || whole)?.control;
  }

  return {
    element: h("div", { class: "fields" }, fields.map((item) => item.wrapper), whole ? whole.wrapper : null),
    read,
    showError,
    clearErrors,
    control: fieldControl,
  };
}
