from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("peersite", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Plain",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("username", models.CharField(max_length=100)),
                ("email", models.CharField(max_length=200)),
            ],
        ),
    ]
