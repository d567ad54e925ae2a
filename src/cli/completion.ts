/**
 * @module completion
 * Shell completion generated from commander's own command/option tree, so it cannot drift.
 */

import type { Command } from "commander";

interface Spec {
  readonly name: string;
  readonly options: readonly { flags: string[]; choices?: readonly string[]; file: boolean }[];
}

function specs(program: Command): Spec[] {
  return program.commands.map((c) => ({
    name: c.name(),
    options: [
      ...c.options.map((o) => ({
        flags: [o.long, o.short].filter((x): x is string => typeof x === "string"),
        ...(o.argChoices ? { choices: o.argChoices } : {}),
        file: /input|output/.test(o.long ?? ""),
      })),
      { flags: ["--help", "-h"], file: false },
    ],
  }));
}

export function completionScript(program: Command, shell: "bash" | "zsh" | "fish"): string {
  const cmds = specs(program);
  const names = cmds.map((c) => c.name).join(" ");
  if (shell === "fish") {
    const lines = [`complete -c peerbuf -f -n '__fish_use_subcommand' -a '${names}'`];
    for (const c of cmds)
      for (const o of c.options) {
        const long = o.flags.find((f) => f.startsWith("--"))?.slice(2);
        const short = o.flags.find((f) => /^-[^-]/.test(f))?.slice(1);
        let line = `complete -c peerbuf -n '__fish_seen_subcommand_from ${c.name}'`;
        if (long) line += ` -l ${long}`;
        if (short) line += ` -s ${short}`;
        if (o.choices) line += ` -x -a '${o.choices.join(" ")}'`;
        else if (o.file) line += " -r -F";
        lines.push(line);
      }
    lines.push(
      `complete -c peerbuf -n '__fish_seen_subcommand_from completion' -x -a 'bash zsh fish'`,
    );
    return lines.join("\n");
  }
  const cases = cmds
    .map((c) => {
      const choices = c.options
        .filter((o) => o.choices)
        .map(
          (o) =>
            `      ${o.flags.join("|")}) COMPREPLY=( $(compgen -W "${o.choices!.join(" ")}" -- "$cur") ); return ;;`,
        )
        .join("\n");
      const files = c.options.filter((o) => o.file).map((o) => o.flags.join("|"));
      const fileCase = files.length
        ? `      ${files.join("|")}) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;\n`
        : "";
      const extra = c.name === "completion" ? " bash zsh fish" : "";
      return `    ${c.name})\n      case "$prev" in\n${fileCase}${choices}\n      esac\n      COMPREPLY=( $(compgen -W "${c.options.flatMap((o) => o.flags).join(" ")}${extra}" -- "$cur") ) ;;`;
    })
    .join("\n");
  const bash = `# peerbuf completion for bash: eval "$(peerbuf completion bash)"
_peerbuf() {
  local cur prev cmd
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  cmd="\${COMP_WORDS[1]}"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=( $(compgen -W "${names} --help --version" -- "$cur") )
    return
  fi
  case "$cmd" in
${cases}
  esac
}
complete -F _peerbuf peerbuf`;
  if (shell === "bash") return bash;
  return `#compdef peerbuf
# peerbuf completion for zsh: eval "$(peerbuf completion zsh)"
autoload -U +X bashcompinit && bashcompinit
${bash}`;
}
