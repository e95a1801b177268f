"""ente-lab tasks. Thin: declarations and help only; the logic is in entelab/.

Flow: settings -> render -> box/VM -> converge -> verify.
Run through ./labctl (it creates and uses the project's virtualenv), e.g.
``./labctl lab.up`` or ``./labctl test.all``.
"""

from invoke import Collection, task

from entelab import task_bodies as body

SET_HELP = {"set": "Override a setting, KEY=VALUE (repeatable), e.g. --set vm.memory=6144"}


# ---------------------------------------------------------------- host
@task(help={"dry-run": "Only print what would be installed/started"})
def prepare(c, dry_run=False):
    """Install and start what the host needs (vagrant, libvirt, qemu, mmdebstrap)."""
    body.run(body.host_prepare, dry_run=dry_run)


@task
def restore(c):
    """Stop the daemons host.prepare started and undo its host changes."""
    body.run(body.host_restore)


# ---------------------------------------------------------------- lab
@task(iterable=["set"], help={**SET_HELP, "rotate-secrets": "Generate new secrets first (all of them)"})
def render(c, set=None, rotate_secrets=False):
    """Validate settings and render every configuration file under build/."""
    body.run(body.render, overrides=set or [], rotate=rotate_secrets)


@task(iterable=["set"], help={**SET_HELP})
def settings(c, set=None):
    """Validate settings and show the effective values (secrets are never shown)."""
    body.run(body.show_settings, overrides=set or [])


@task(help={"force": "Rebuild even when the cached box matches the recipe"})
def box(c, force=False):
    """Build the Debian 12 base box offline (mmdebstrap) and add it to Vagrant."""
    body.run(body.build_box, force=force)


@task(iterable=["set"], help={**SET_HELP, "workshop": "Up to the certificates, then every "
                                                        "article step back to its start, then the "
                                                        "workshop-base snapshot (docs/workshop.md)"})
def up(c, set=None, workshop=False):
    """Bring the lab up: prepare -> render -> box -> vagrant up -> converge -> certs -> stack -> smoke."""
    body.run(body.up, overrides=set or [], workshop=workshop)


@task
def down(c):
    """Halt the VM; its disk is kept for the next lab.up."""
    body.run(body.down)


@task(help={"yes": "Do not ask for confirmation"})
def destroy(c, yes=False):
    """Destroy the VM and its disk (asks unless --yes)."""
    body.run(body.destroy, yes=yes)


@task
def status(c):
    """Show VM state, provider, acceleration, address, services and last converge."""
    body.run(body.status)


@task(help={"command": "Run this command instead of an interactive shell"})
def ssh(c, command=""):
    """Open a shell in the VM (or run one command)."""
    body.run(body.ssh, command=command)


@task(help={"service": "A stack service: museum, postgres, minio, minio-provision, socat, auth-web, cli "
                       "(the 'ente-' prefix may be left out)",
            "follow": "Keep streaming new lines (Ctrl-C ends)", "tail": "Lines of history to show first"})
def logs(c, service, follow=False, tail=200):
    """docker-compose logs of one stack service, in the VM's compose directory."""
    body.run(body.logs, service=service, follow=follow, tail=int(tail))


@task(iterable=["set"], help={**SET_HELP})
def converge(c, set=None):
    """Push the rendered files that differ, validate them, reload what changed."""
    body.run(body.converge_lab, overrides=set or [])


@task(positional=["name"], help={"name": "A pitfall's name (./labctl lab.pitfalls lists them)"})
def explain(c, name):
    """What pitfall NAME is: the article's text, symptom, cause, fix, deviation row, switch."""
    body.run(body.explain, name=name)


@task(name="pitfalls")
def pitfalls_(c):
    """Every pitfall of the article: name, section, switch on/off/none (settings pitfalls.*)."""
    body.run(body.pitfalls_table)


@task
def certs(c):
    """Issue the lab certificate from the private ACME CA (pebble) with dehydrated."""
    body.run(body.issue_certs)


@task
def renew(c):
    """Force a renewal and show the Apache and Postfix serials before and after."""
    body.run(body.renew)


# ---------------------------------------------------------------- mail and administration (issue 14)
@task(help={"address": "Only the mail for this address (default: every message)",
            "show": "Print message N of the table in full (headers and body)"})
def mail(c, address="", show=0):
    """The lab's catch-all mailbox (every address @<domain>): time, from, to, subject."""
    body.run(body.mail, address=address, show=int(show))


@task(help={"email": "The address that asked for a code"})
def ott(c, email):
    """The newest one-time code for EMAIL: from the mailbox, or (mail off) Museum's log."""
    body.run(body.ott, email=email)


@task(help={"admin": "Official payload: the admin account the CLI acts as (-a)"})
def users(c, admin=""):
    """List the Ente accounts (stand-in: psql on the users table; official: ente admin list-users)."""
    body.run(body.users, admin_email=admin)


@task(name="admin", help={"email": "The account to promote"})
def admin_(c, email):
    """Make EMAIL's account an admin: id into settings admins, converge, restart Museum."""
    body.run(body.promote, email=email)


@task(name="cli-account-add")
def cli_account_add(c):
    """Official payload only: 'ente account add' in the ente-cli container (interactive)."""
    body.run(body.cli_account_add)


@task(name="cli-unlimited", help={"email": "The account to give an unlimited subscription",
                                  "admin": "The admin account the CLI acts as"})
def cli_unlimited(c, email, admin):
    """Official payload only: 'ente admin update-subscription -a ADMIN -u EMAIL --no-limit'."""
    body.run(body.cli_unlimited, email=email, admin_email=admin)


# ---------------------------------------------------------------- production (issue 18)
PROD_HELP = {"user": "SSH user (default: your ssh config's or your own)", "port": "SSH port",
             "identity": "SSH private key file", "sudo": "Read files the user cannot with `sudo -n cat`",
             "root": "Read the server's files under this directory instead of / (a copy, a stand-in)"}


@task(iterable=["set"], help={**PROD_HELP, **SET_HELP})
def diff(c, host, user="", port=22, identity="", sudo=False, root="/", set=None):
    """Compare a production server's files (read-only, SSH) with the lab's; exit 3 on a pitfall."""
    body.run(body.diff, host=host, user=user, port=int(port), identity=identity, sudo=sudo,
             root=root, overrides=set or [])


@task(name="import", help={**PROD_HELP, "with-secrets": "Also take the server's secrets (written 0600, never shown)",
                           "output": "Settings file to write (default settings.local.yaml)",
                           "secrets-file": "Secrets file for --with-secrets (default .lab-secrets.yaml)",
                           "force": "Overwrite the output files"})
def import_(c, host, user="", port=22, identity="", sudo=False, root="/", with_secrets=False,
            output="", secrets_file="", force=False):
    """Write lab settings reproducing a production server (read-only, SSH); says what it could not map."""
    body.run(body.import_, host=host, user=user, port=int(port), identity=identity, sudo=sudo,
             root=root, with_secrets=with_secrets, output=output, secrets_file=secrets_file, force=force)


# ---------------------------------------------------------------- verify and upgrade (issue 16)
@task(name="verify")
def verify_(c):
    """The verify suite: services, stack, proxy, mail (a code delivered), renewal; timed."""
    body.run(body.verify)


@task(name="upgrade", iterable=["set"],
      help={"set": "A change, KEY=VALUE (repeatable), e.g. --set images.postgres=ente-lab/postgres:17",
            "file": "A settings YAML file whose keys are the change set",
            "plan": "Print the plan and stop",
            "naive": "A PostgreSQL major change by the tag only (no dump/restore), as an administrator "
                     "would try it",
            "keep-on-failure": "Do not roll back a failure: leave it for inspection"})
def upgrade_(c, set=None, file="", plan=False, naive=False, keep_on_failure=False):
    """Rehearse an upgrade: plan, snapshot, dump, apply, verify, data check; keep or roll back."""
    body.run(body.upgrade, sets=set or [], file=file, plan=plan, naive=naive,
             keep_on_failure=keep_on_failure)


# ---------------------------------------------------------------- workshop (issue 17)
STEP_HELP = {"step": "A workshop step (./labctl lab.workshop.steps lists them, in the article's order)"}


@task(name="start", positional=["step"], help=STEP_HELP)
def workshop_start(c, step):
    """Every step before STEP done, STEP onward left to type (from the workshop-base snapshot)."""
    body.run(body.workshop_start, step=step)


@task(name="check", iterable=["step"],
      help={"step": "Only this step (repeatable): only its probes run, about half the time"})
def workshop_check(c, step=None):
    """Each step: done / not done / wrong / works with a pitfall, the symptom, the section to reread."""
    body.run(body.workshop_check, steps=step or [])


@task(name="solve", positional=["step"], help=STEP_HELP)
def workshop_solve(c, step):
    """Converge STEP alone: its files as the lab renders them (a stuck attendee catches up)."""
    body.run(body.workshop_solve, step=step)


@task(name="reset", positional=["step"], help=STEP_HELP)
def workshop_reset(c, step):
    """Back to the start of STEP (as lab.workshop.start STEP)."""
    body.run(body.workshop_reset, step=step)


@task(name="steps")
def workshop_steps(c):
    """The steps in the article's order: name, article section, what the attendee types."""
    body.run(body.workshop_steps)


# ---------------------------------------------------------------- tests
K_HELP = {"k": "Only tests matching this pytest -k expression"}
KEEP_HELP = {"keep": "Leave the VM running afterwards"}


@task(help=K_HELP)
def host_tests(c, k=""):
    """Fast host tests: settings, rendering, real-tool validation (no VM)."""
    body.run(body.tests, which="host", k=k)


@task(help={**K_HELP, **KEEP_HELP})
def vm_tests(c, k="", keep=False):
    """VM tests: brings the lab up once, runs every vm test against it."""
    body.run(body.tests, which="vm", k=k, keep=keep)


@task(help={**KEEP_HELP, "budget": "Minutes the whole run may take (default 80; 0: no limit): the "
                                   "slowest VM tests that would end later are skipped, each said"})
def all_tests(c, keep=False, budget="80"):
    """Everything: host prerequisites, host tests, then the VM tests; destroys the VM."""
    body.run(body.tests, which="all", keep=keep, budget=budget)


# ---------------------------------------------------------------- snapshots (issue 11)
@task(name="snapshot", help={"name": "Snapshot name: a-z 0-9 . _ - (starts with a letter or digit)"})
def snapshot_(c, name):
    """Save the running lab (disk + memory) as snapshot NAME (libvirt internal snapshot)."""
    body.run(body.take_snapshot, name=name)


@task(name="restore", help={"name": "Snapshot to go back to (see lab.snapshots)"})
def restore_(c, name):
    """Go back to snapshot NAME: clock set, services checked, pebble root republished."""
    body.run(body.restore_snapshot, name=name)


@task(name="snapshots")
def snapshots_(c):
    """List the lab's snapshots: name, time, memory state size, disk cost."""
    body.run(body.snapshots)


@task(name="forget", help={"name": "Snapshot to delete"})
def forget_(c, name):
    """Delete snapshot NAME and free its space."""
    body.run(body.forget, name=name)


@task(name="suspend")
def suspend_(c):
    """Save the VM's memory to disk and stop it (libvirt managed save); lab.resume goes on."""
    body.run(body.suspend)


@task(name="resume")
def resume_(c):
    """Resume a suspended lab: memory restored, clock set, services and root checked."""
    body.run(body.resume)


ns = Collection()
ns.add_collection(Collection("host", prepare, restore))
ns.add_collection(Collection("lab", render, settings, box, up, down, destroy, status, ssh,
                             logs, converge, certs, renew))
tests = Collection("test")
tests.add_task(host_tests, "host")
tests.add_task(vm_tests, "vm")
tests.add_task(all_tests, "all")
ns.add_collection(tests)
ns.collections["lab"].add_task(snapshot_)
ns.collections["lab"].add_task(restore_)
ns.collections["lab"].add_task(snapshots_)
ns.collections["lab"].add_task(forget_)
ns.collections["lab"].add_task(suspend_)
ns.collections["lab"].add_task(resume_)
for _t in (mail, ott, users, admin_, cli_account_add, cli_unlimited, explain, pitfalls_, diff, import_,
           verify_, upgrade_):
    ns.collections["lab"].add_task(_t)
ns.collections["lab"].add_collection(Collection("workshop", workshop_start, workshop_check,
                                                 workshop_solve, workshop_reset, workshop_steps))
