/**
 * The fields of one of WeChat's flat XML messages (`<xml><Tag><![CDATA[v]]></Tag><N>1</N></xml>`), by
 * tag name. WeChat's pushes are one level deep; nested elements are returned as their raw inner text.
 * Not a general XML parser: no attributes, no DTDs (so no entity expansion to abuse).
 */
export function parseFlatXml(xml: string): Record<string, string> {
  const fields: Record<string, string> = {};
  const inner = /<xml>([\s\S]*)<\/xml>/.exec(xml)?.[1];
  if (inner === undefined) return fields;
  const field = /<([A-Za-z_][\w.-]*)>(?:<!\[CDATA\[([\s\S]*?)\]\]>|([\s\S]*?))<\/\1>/g;
  for (let match = field.exec(inner); match; match = field.exec(inner)) {
    const [, name, cdata, text] = match;
    if (!(name! in fields)) fields[name!] = cdata ?? decodeEntities(text ?? '');
  }
  return fields;
}

function decodeEntities(text: string): string {
  return text.replace(/&(lt|gt|amp|quot|apos);/g, (_, name: string) => ({ lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" })[name]!);
}

/** Escapes CDATA content so `]]>` inside a value cannot end the section early. */
export function cdata(value: string): string {
  return `<![CDATA[${value.replaceAll(']]>', ']]]]><![CDATA[>')}]]>`;
}
