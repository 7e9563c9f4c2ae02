#!/usr/bin/env bash
# Brings the PIPEFORCE service template's later changes into this project, the way copier's
# `update` does for Python projects (cargo-generate has no such command):
#   scripts/upgrade-template.sh [--git URL | --path DIR] [--rev REV] [--from REV]
#
#   --git URL   the template's Git repository
#   --path DIR  a local Git clone of the template (its commits: uncommitted changes are not
#               part of any revision)
#               (either one is recorded; later upgrades need neither)
#   --rev REV   the template revision to upgrade to: a commit, tag or branch (default: the
#               repository's HEAD); the commit it names is recorded
#   --from REV  the template commit this project was generated from or last upgraded to, when
#               .pipeforce-template.toml does not record it (the first upgrade of a project
#               generated without `-d template_revision=...`)
#
# What it does:
#   1. Renders the template at the recorded revision and at REV, both with the answers
#      recorded in .pipeforce-template.toml, into a temp folder.
#   2. The framework, each crate of the template under crates/, is replaced by the new
#      render's: it is the template's code (an edit made here is overwritten, and listed).
#   3. Every other file of the template (manifests, Dockerfile, CI files, scripts, README, ...)
#      is merged three ways with `git merge-file`: the old render is the common ancestor, this
#      project's copy is "ours" and the new render's "theirs". A file the template did not
#      change is left alone; one you did not change is replaced.
#   4. src/ and tests/ are yours and never touched; the summary lists the ones the template
#      changed, for you to look at.
#   5. Refreshes Cargo.lock for the merged manifests (`cargo update --workspace`): the
#      template's lock file when you had not changed yours, else yours, completed.
#   6. Records REV and the source in .pipeforce-template.toml.
# It ends with a summary. A merge with conflicts leaves the markers in place, as git does, and
# exits with status 1; resolve them, then run `cargo update --workspace`. Upgrading to the
# recorded revision changes nothing.
#
# In a Git checkout the project's files must be committed first, so that `git diff` shows
# exactly what the upgrade changed. Needs git and cargo-generate (0.23) on PATH.
set -euo pipefail

# The upgrade may replace this very script, and bash reads a script as it runs: braces make it
# read everything up to the closing one before running any of it.
{

root=$(cd "$(dirname "$0")/.." && pwd)
record=.pipeforce-template.toml

die() {
    echo "upgrade-template: $*" >&2
    exit 2
}

usage() {
    sed -n '4,14s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

source_arg='' rev='' from=''
while [ $# -gt 0 ]; do
    case $1 in
        --git | --path | --rev | --from)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
            case $1 in
                --git) source_arg=$2 ;;
                --path)
                    [ -d "$2" ] || die "--path $2: no such directory"
                    source_arg=$(cd "$2" && pwd)
                    ;;
                --rev) rev=$2 ;;
                --from) from=$2 ;;
            esac
            shift 2
            ;;
        -h | --help) usage ;;
        *)
            echo "upgrade-template: unknown argument $1" >&2
            usage
            ;;
    esac
done

cd "$root"
[ -f "$record" ] || die "$root/$record is missing: it records the answers and the template revision the project was generated with"

# The value of `key = "value"` in the recorded file (the hooks keep values free of quotes).
recorded() {
    sed -n "s/^$1 = \"\(.*\)\"\$/\1/p" "$record" | head -n 1
}

name=$(recorded project-name)
[ -n "$name" ] || die "$record records no project-name under [answers]"
# Every answer but the name goes to cargo-generate as `-d key=value`.
defines=()
while IFS= read -r answer; do
    defines+=(-d "$answer")
done < <(sed -n '/^\[answers\]/,/^\[/s/^\([a-z_]*\) = "\(.*\)"$/\1=\2/p' "$record")

source_url=${source_arg:-$(recorded source)}
[ -n "$source_url" ] || die "$record records no template source yet: pass --git URL or --path DIR"
case $source_url in
    *\"* | *\\*) die "the template source $source_url contains a quote or backslash" ;;
esac

command -v git >/dev/null || die "git is not on PATH"
cargo generate --version >/dev/null 2>&1 ||
    die "cargo-generate is not installed: cargo install cargo-generate --version 0.23.14 --locked"

if git rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
    [ -n "$(git status --porcelain -- .)" ]; then
    die "$root has uncommitted changes: commit or stash them first, so that git diff shows what the upgrade changes"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "upgrade-template: fetching the template from $source_url" >&2
# Its commits only: uncommitted changes in a local clone are not part of any revision.
git clone --quiet --no-checkout "$source_url" "$work/repo" ||
    die "cannot clone the template from $source_url (--git needs a Git URL, --path a Git clone)"

# The full commit id a revision names (a branch may exist only as origin/<branch>).
resolve() {
    git -C "$work/repo" rev-parse --verify --quiet "$1^{commit}" ||
        git -C "$work/repo" rev-parse --verify --quiet "origin/$1^{commit}" ||
        die "the template at $source_url has no revision $1"
}

new_rev=$(resolve "${rev:-HEAD}")
old_rev=${from:-$(recorded revision)}
[ -n "$old_rev" ] || die "$record does not record the template revision this project was generated from: pass --from <commit> (the template's commit at the time, e.g. from git log in the template)"
old_rev=$(resolve "$old_rev")

# Records the source and the new revision, leaving the file alone when they are recorded.
write_record() {
    local escaped
    escaped=$(printf '%s' "$source_url" | sed 's/[|&\\]/\\&/g')
    sed -e "s|^source = \".*\"\$|source = \"$escaped\"|" \
        -e "s|^revision = \".*\"\$|revision = \"$new_rev\"|" "$record" >"$work/record"
    cmp -s "$work/record" "$record" || cat "$work/record" >"$record"
}

# Already there: nothing to render or merge (an edit made in the framework stays until an
# upgrade brings a new revision).
if [ "$old_rev" = "$new_rev" ]; then
    write_record
    echo "The template of $name is already at ${new_rev:0:12} ($source_url): nothing to upgrade."
    exit 0
fi

# Renders the template at commit $1 with the recorded answers into $work/$2/<name>: from a
# copy of just the template's files, as ci/render does.
render() {
    local stage="$work/stage-$2"
    mkdir -p "$stage" "$work/$2"
    git -C "$work/repo" archive "$1" cargo-generate.toml hooks template | tar -x -C "$stage"
    if ! cargo generate --path "$stage" template --name "$name" --silent --vcs none \
        "${defines[@]}" -d template_source="$source_url" -d template_revision="$1" \
        --destination "$work/$2" >"$work/render-$2.log" 2>&1; then
        cat "$work/render-$2.log" >&2
        die "cannot render the template at $1 with the recorded answers"
    fi
}
render "$old_rev" old
render "$new_rev" new
old="$work/old/$name" new="$work/new/$name"

updated=() merged=() conflicts=() kept=() yours=()

# Replaces the project's copy of $1 with the new render's, or removes it if the new render
# has none, and lists it under updated.
take_new() {
    local note=''
    if [ ! -f "$new/$1" ]; then
        rm -f "$1"
        note=' (removed)'
    else
        [ -f "$1" ] || note=' (new)'
        mkdir -p "$(dirname "$1")"
        cp -p "$new/$1" "$1"
    fi
    updated+=("$1$note")
}

# Whether two files exist and have the same contents, or neither exists.
same() {
    if [ -f "$1" ] && [ -f "$2" ]; then
        cmp -s "$1" "$2"
    else
        [ ! -f "$1" ] && [ ! -f "$2" ]
    fi
}

# Whether two lock files hold the same entries: cargo keeps them sorted by name, and a render's
# service entry sits where the template's placeholder sorted, so the order alone says nothing.
same_lock() {
    [ -f "$1" ] && [ -f "$2" ] && [ "$(lock_entries "$1")" = "$(lock_entries "$2")" ]
}
lock_entries() {
    awk 'BEGIN { RS = "" } { gsub(/\n/, "|"); print }' "$1" | sort
}

# Every file of either render. Files only this project has (your own crates, proptest's
# regression files) are not the template's business.
list_files() {
    (cd "$old" && find . -type f)
    (cd "$new" && find . -type f)
}

while IFS= read -r file; do
    file=${file#./}
    base="$old/$file" theirs="$new/$file"
    case $file in
        "$record") ;; # rewritten at the end
        src/* | tests/*)
            same "$base" "$theirs" || yours+=("$file")
            ;;
        crates/*/*)
            # The framework: the template's copy wins.
            same "$file" "$theirs" && continue
            [ -f "$file" ] && ! same "$file" "$base" && kept+=("$file (your edit replaced by the template's)")
            take_new "$file"
            ;;
        Cargo.lock)
            # Refreshed below; the template's copy is the better start unless you changed yours.
            if ! same_lock "$base" "$theirs" && same_lock "$file" "$base"; then take_new "$file"; fi
            ;;
        *)
            if same "$base" "$theirs" || same "$file" "$theirs"; then
                continue
            elif same "$file" "$base"; then
                take_new "$file"
            elif [ ! -f "$file" ]; then
                kept+=("$file (deleted here; the template changed it)")
            elif [ ! -f "$theirs" ]; then
                kept+=("$file (edited here; the template removed it)")
            else
                [ -f "$base" ] || base=/dev/null
                if git merge-file -L "$file (this project)" -L "$file (template ${old_rev:0:12})" \
                    -L "$file (template ${new_rev:0:12})" "$file" "$base" "$theirs"; then
                    merged+=("$file")
                else
                    conflicts+=("$file")
                fi
            fi
            ;;
    esac
done < <(list_files | sort -u)

# Cargo.lock for the merged manifests; not while a manifest holds conflict markers.
lock_note=''
if [ ${#updated[@]} -gt 0 ] || [ ${#merged[@]} -gt 0 ] || [ ${#conflicts[@]} -gt 0 ]; then
    cp -p Cargo.lock "$work/Cargo.lock.before" 2>/dev/null || true
    if cargo update --workspace --quiet >"$work/lock.log" 2>&1; then
        if ! same Cargo.lock "$work/Cargo.lock.before"; then
            lock_note="Cargo.lock refreshed for the merged manifests"
        fi
    else
        lock_note="Cargo.lock NOT refreshed: cargo update --workspace failed (run it after resolving any conflicts):
$(sed 's/^/    /' "$work/lock.log")"
    fi
fi

write_record

# The summary.
list() {
    local title=$1
    shift
    [ $# -gt 0 ] || return 0
    echo "$title:"
    printf '  %s\n' "$@"
}
echo "Template upgrade of $name: ${old_rev:0:12} -> ${new_rev:0:12} ($source_url)"
list "Updated from the template" ${updated[@]+"${updated[@]}"}
list "Merged cleanly" ${merged[@]+"${merged[@]}"}
list "Merged with conflicts (markers in place)" ${conflicts[@]+"${conflicts[@]}"}
list "Worth a look" ${kept[@]+"${kept[@]}"}
list "Yours, changed in the template, not touched (compare with the template's)" \
    ${yours[@]+"${yours[@]}"}
[ -z "$lock_note" ] || echo "$lock_note"
echo "${#updated[@]} updated, ${#merged[@]} merged cleanly, ${#conflicts[@]} with conflicts."
if [ ${#conflicts[@]} -gt 0 ]; then
    echo "Resolve the conflict markers (<<<<<<<) in the files above, then run cargo update --workspace." >&2
    exit 1
fi
exit
}
